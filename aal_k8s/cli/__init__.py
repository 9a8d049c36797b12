"""The ``aal-k8s`` command line: one module per subcommand.

    aal-k8s plan --dataset celeba --backend k8s    # runs, GPU-hours, bytes and cost first
    aal-k8s pipeline --dataset synthetic           # the whole protocol, end to end
    aal-k8s submit --stage pairwise --dataset celeba --backend k8s
    aal-k8s status --stage pairwise
    aal-k8s reduce && aal-k8s final && aal-k8s report
    aal-k8s prepare --dataset celeba --source /data/celeba --store s3://bucket/aal

Errors caused by input (config, dataset, attribute, stage order) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from aal_k8s.errors import AALError

SUBCOMMANDS = ["plan", "pipeline", "submit", "status", "reduce", "final", "report", "worker", "prepare"]
SUBCOMMANDS += ["logs", "cancel"]  # a run's log, cancelling a stage (both backends; see docs/kubernetes.md)
SUBCOMMANDS += ["download", "predict", "doctor"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"aal-k8s: error: {message}\n")


# the final model set outside the store: fetch it verified, predict with it

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aal-k8s", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        mod = importlib.import_module(f"aal_k8s.cli.{name}")
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=mod.__doc__,
            epilog=getattr(mod, "EXAMPLES", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same cleanup runs (local workers
    stopped, queued runs never started, a worker's log copied to the store)."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or an argparse error already printed on one line
        return int(e.code or 0)
    in_main = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return int(args.func(args) or 0)
    except AALError as e:
        print(f"aal-k8s: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except Terminated:
        print("aal-k8s: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("aal-k8s: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)

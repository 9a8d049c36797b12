"""Watch an experiment's runs until none is running or pending any more (or Ctrl-C).

Per stage: done / running / pending / failed / not submitted, run-seconds so far and an ETA from
the measured run times; the slowest runs and the failed ones with their last log line. Redrawn in
place on a terminal; plain lines when the output is not a terminal (one per stage per change).
Only stages with submitted runs are shown. Exits 0 when no run failed, else 1. ``--once``: one
look, then exit.
"""

from __future__ import annotations

from aal_k8s.cli.common import add_config_args, config_from_args, examples, experiment_store

HELP = "live progress of an experiment's runs"
EXAMPLES = examples(
    "aal-k8s watch --dataset celeba --backend k8s --store s3://bucket/aal",
    "aal-k8s watch --dataset synthetic --stage pairwise --once",
)


def add_arguments(p) -> None:
    from aal_k8s.stages import STAGES

    p.add_argument("--stage", choices=STAGES, action="append", help="only this stage (repeatable; default: all)")
    p.add_argument("--once", action="store_true", help="show the progress once and exit")
    p.add_argument("--interval", type=float, metavar="S", help="seconds between polls (default: 2 local, 15 k8s)")
    add_config_args(p)


def run(args) -> int:
    import time

    from aal_k8s.backends import get_backend
    from aal_k8s.errors import AALError
    from aal_k8s.cli.progress import live_view
    from aal_k8s.stages import STAGES

    if args.interval is not None and not args.interval > 0:
        raise AALError(f"--interval: must be > 0 seconds, got {args.interval}")
    cfg = config_from_args(args)
    exp = experiment_store(cfg)
    backend = get_backend(cfg.executor.backend, cfg)
    stages = [s for s in STAGES if s in args.stage] if args.stage else list(STAGES)
    view = live_view(cfg, exp, backend, stages, started_only=True)
    if args.interval is not None:
        view.interval = args.interval
    if args.once:
        view.live = False
        progress = view.update()
    else:
        with view:
            while view.last is None or view.last.in_flight:
                time.sleep(view.interval)
        progress = view.last
    return 1 if progress is None or progress.failed else 0

"""Run the ``aal-k8s`` CLI with local workers that only announce themselves and sleep (not a test
module): ``python local_stop_driver.py STARTED_DIR -- aal-k8s args...``. Each worker creates
``STARTED_DIR/<pid>`` and sleeps, so a test can stop the stage while runs are in flight."""

from __future__ import annotations

import signal
import sys

FAKE_WORKER = "import os, sys, time; open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close(); time.sleep(600)"


def main() -> int:
    # Ctrl-C comes from a terminal, where SIGINT has its default handler. A test run started in the
    # background of a non-interactive shell (`pytest ... &`) hands every child SIGINT ignored, and
    # the CLI rightly keeps an inherited ignore (as nohup users expect), so emulate the terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sep = sys.argv.index("--")
    started = sys.argv[1]
    from aal_k8s.backends.local import LocalBackend
    from aal_k8s.cli import main as cli

    LocalBackend.worker_command = lambda self, pack, exp, until_epoch=0: [sys.executable, "-c", FAKE_WORKER, started]
    return cli(sys.argv[sep + 1 :])


if __name__ == "__main__":
    sys.exit(main())

"""Run ``aal-k8s worker`` with a test hook, as a separate process (not a test module).

python worker_hooks.py pause-mid-epoch SIGNAL_FILE -- worker args...
    after the first checkpoint is written, the second training step of the next epoch
    creates SIGNAL_FILE and sleeps (the test then kills the process with SIGKILL)
python worker_hooks.py barrier-before-commit DIR N -- worker args...
    before committing, wait until N processes have reached the commit (files in DIR)
"""

from __future__ import annotations

import os
import sys
import time
import uuid


def pause_mid_epoch(signal_file: str) -> None:
    from aal_k8s.train import modes
    from aal_k8s.store.layout import ExperimentStore

    state = {"checkpointed": False, "steps": 0}
    write_checkpoint = ExperimentStore.write_checkpoint
    head_losses = modes.head_losses

    def hooked_write(self, *a, **k):
        key = write_checkpoint(self, *a, **k)
        state["checkpointed"] = True
        return key

    def hooked_losses(*a, **k):
        if state["checkpointed"]:
            state["steps"] += 1
            if state["steps"] == 2:
                with open(signal_file, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(600)
        return head_losses(*a, **k)

    ExperimentStore.write_checkpoint = hooked_write
    modes.head_losses = hooked_losses


def barrier_before_commit(folder: str, n: int) -> None:
    from aal_k8s.store.layout import ExperimentStore

    commit_run = ExperimentStore.commit_run

    def hooked_commit(self, *a, **k):
        open(os.path.join(folder, f"ready-{uuid.uuid4().hex}"), "w").close()
        deadline = time.time() + 120
        while len(os.listdir(folder)) < n and time.time() < deadline:
            time.sleep(0.01)
        return commit_run(self, *a, **k)

    ExperimentStore.commit_run = hooked_commit


def main() -> int:
    sep = sys.argv.index("--")
    mode, *params = sys.argv[1:sep]
    if mode == "pause-mid-epoch":
        pause_mid_epoch(params[0])
    elif mode == "barrier-before-commit":
        barrier_before_commit(params[0], int(params[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    from aal_k8s.cli import main as cli_main

    return cli_main(sys.argv[sep + 1 :])


if __name__ == "__main__":
    sys.exit(main())

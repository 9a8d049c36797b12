"""TensorBoard event files per run, in the store: ``tensorboard --logdir <store>/<experiment>/runs``.

Each attempt at a run writes one event file under its own folder (the commit protocol's rule:
attempts never write outside ``attempts/<attempt>/``)::

    runs/<run_id>/attempts/<attempt>/tensorboard/events.out.tfevents.<time>.<host>...

Scalars per epoch (step = epoch): ``val_acc/<head>``, ``train_loss/<head>``, ``lr``,
``epoch_seconds``; after training ``test_acc/<head>`` and ``best_val_acc/<head>`` at the best
epoch. Object stores do not append, so the whole (small) file is uploaded again after every epoch;
TensorBoard re-reads it. A resumed attempt writes the epochs it inherited first, so each attempt's
file holds the complete curves.
"""

from __future__ import annotations

import os
import shutil
import tempfile

EVENTS_DIR = "tensorboard"


class RunEvents:
    """Writes a run's scalars to a local event file and mirrors it into the store."""

    def __init__(self, exp, run_id: str):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.exp, self.run_id = exp, run_id
        self._dir = tempfile.mkdtemp(prefix="aal-tb-")
        self._writer = SummaryWriter(log_dir=self._dir)

    def epoch(self, entry: dict) -> None:
        """One entry of the trainer's history (``epoch``, ``lr``, ``train_loss``, ``val_acc``, ``seconds``)."""
        step = int(entry["epoch"])
        for head, v in entry["val_acc"].items():
            self._writer.add_scalar(f"val_acc/{head}", v, step)
        for head, v in entry["train_loss"].items():
            self._writer.add_scalar(f"train_loss/{head}", v, step)
        self._writer.add_scalar("lr", entry["lr"], step)
        self._writer.add_scalar("epoch_seconds", entry["seconds"], step)
        self._upload()

    def result(self, best_epoch: int, val_acc: dict[str, float], test_acc: dict[str, float]) -> None:
        for head, v in val_acc.items():
            self._writer.add_scalar(f"best_val_acc/{head}", v, best_epoch)
        for head, v in test_acc.items():
            self._writer.add_scalar(f"test_acc/{head}", v, best_epoch)
        self._upload()

    def close(self) -> None:
        self._writer.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _upload(self) -> None:
        self._writer.flush()
        for name in os.listdir(self._dir):
            with open(os.path.join(self._dir, name), "rb") as f:
                self.exp.store.put_bytes(self.exp.attempt_key(self.run_id, f"{EVENTS_DIR}/{name}"), f.read())


def open_events(exp, run_id: str, log) -> RunEvents | None:
    """A writer for ``run_id``, or None (one log line) when tensorboard is not installed."""
    try:
        return RunEvents(exp, run_id)
    except ImportError:
        print(f"run {run_id}: no TensorBoard event files (pip install tensorboard to get them)", file=log)
        return None

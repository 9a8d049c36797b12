"""Per-epoch metrics of a run: TensorBoard event files in the store (always), MLflow (optional).

TensorBoard: ``tensorboard --logdir <store>/<experiment>/runs``.

Each attempt at a run writes one event file under its own folder (the commit protocol's rule:
attempts never write outside ``attempts/<attempt>/``)::

    runs/<run_id>/attempts/<attempt>/tensorboard/events.out.tfevents.<time>.<host>...

Scalars per epoch (step = epoch): ``val_acc/<head>``, ``train_loss/<head>``, ``lr``,
``epoch_seconds``; after training ``test_acc/<head>`` and ``best_val_acc/<head>`` at the best
epoch. Object stores do not append, so the whole (small) file is uploaded again after every epoch;
TensorBoard re-reads it. A resumed attempt writes the epochs it inherited first, so each attempt's
file holds the complete curves.

MLflow (``pip install aal-k8s[mlflow]``), off unless ``MLFLOW_TRACKING_URI`` is set in the
worker's environment (local backend: inherited; Kubernetes: ``--set k8s.env.MLFLOW_TRACKING_URI=...``):
one MLflow run per attempt, named after the run id, in the MLflow experiment named after the
aal-k8s experiment, with the spec as params and the same metrics. A tracking server that fails
costs one log line, never the training run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from aal_k8s.store.layout import EVENTS_DIR  # the store layout names the folder


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


class MlflowRun:
    """The same scalars as an MLflow run (client API: no process-global active run)."""

    def __init__(self, exp, spec):
        from mlflow import MlflowClient  # tracking URI from MLFLOW_TRACKING_URI

        self.client = MlflowClient()
        found = self.client.get_experiment_by_name(exp.experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(exp.experiment)
        tags = {"aal_k8s.run_id": spec.run_id, "aal_k8s.stage": spec.stage, "aal_k8s.attempt": exp.attempt}
        self.run_id = self.client.create_run(exp_id, run_name=spec.run_id, tags=tags).info.run_id
        train = spec.config.get("train", {})
        params = {
            "stage": spec.stage, "mode": spec.mode, "primary": ",".join(spec.primary),
            "auxiliary": ",".join(spec.auxiliary), "lambda": spec.lam, "seed": spec.seed,
            **{f"train.{k}": train[k] for k in ("lr", "epochs", "batch_size", "weight_decay") if k in train},
        }  # fmt: skip
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def _log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def epoch(self, entry: dict) -> None:
        values = {f"val_acc/{h}": v for h, v in entry["val_acc"].items()}
        values.update({f"train_loss/{h}": v for h, v in entry["train_loss"].items()})
        values.update(lr=entry["lr"], epoch_seconds=entry["seconds"])
        self._log(values, int(entry["epoch"]))

    def result(self, best_epoch: int, val_acc: dict[str, float], test_acc: dict[str, float]) -> None:
        values = {f"best_val_acc/{h}": v for h, v in val_acc.items()}
        values.update({f"test_acc/{h}": v for h, v in test_acc.items()})
        self._log(values, best_epoch)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Sinks:
    """Every metrics sink of a run; a failing optional sink (MLflow) is dropped with one log line."""

    def __init__(self, sinks: list, run_id: str, log):
        self.sinks, self.run_id, self.log = sinks, run_id, log

    def _each(self, method: str, *args) -> None:
        for sink in list(self.sinks):
            if not isinstance(sink, MlflowRun):
                getattr(sink, method)(*args)
                continue
            try:
                getattr(sink, method)(*args)
            except Exception as e:  # the tracking server is optional; the training run is not
                print(f"run {self.run_id}: MLflow logging stopped ({type(e).__name__}: {e})", file=self.log)
                self.sinks.remove(sink)

    def epoch(self, entry: dict) -> None:
        self._each("epoch", entry)

    def result(self, best_epoch: int, val_acc: dict[str, float], test_acc: dict[str, float]) -> None:
        self._each("result", best_epoch, val_acc, test_acc)

    def close(self) -> None:
        self._each("close")


def open_events(exp, spec, log=None) -> Sinks:
    """The run's sinks: TensorBoard (unless not installed: one log line), MLflow when
    ``MLFLOW_TRACKING_URI`` is set (unless mlflow is missing or the server fails: one log line)."""
    log = log if log is not None else sys.stderr
    sinks: list = []
    try:
        sinks.append(RunEvents(exp, spec.run_id))
    except ImportError:
        print(f"run {spec.run_id}: no TensorBoard event files (pip install tensorboard to get them)", file=log)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        try:
            sinks.append(MlflowRun(exp, spec))
        except ImportError:
            print(f"run {spec.run_id}: MLFLOW_TRACKING_URI is set but mlflow is not installed (pip install aal-k8s[mlflow])", file=log)
        except Exception as e:
            print(f"run {spec.run_id}: no MLflow logging ({type(e).__name__}: {e})", file=log)
    return Sinks(sinks, spec.run_id, log)

"""What every run leaves besides its weights: per-image correctness (val at the best epoch, test),
TensorBoard event files in the store, MLflow runs when MLFLOW_TRACKING_URI is set."""

import io
import os

import numpy as np
import pytest
import torch

from aal_k8s import predictions
from aal_k8s.data import load_dataset
from aal_k8s.planner import plan_stage
from aal_k8s.store import ExperimentStore, LocalStore
from aal_k8s.train import train_run


def test_per_image_correctness_averages_to_the_reported_accuracies(tiny_cfg):
    data = load_dataset(tiny_cfg.dataset)
    spec = plan_stage("pairwise", tiny_cfg)[0]
    r = train_run(spec, data)
    assert r.correct["val"].shape == (64, 2) and r.correct["test"].shape == (64, 2)
    for j, head in enumerate(spec.heads):
        assert r.correct["val"][:, j].double().mean().item() == r.val_acc[head]  # at the best epoch
        assert r.correct["test"][:, j].double().mean().item() == r.test_acc[head]


def test_correctness_is_the_best_epochs_also_after_resuming_past_it(tiny_overrides):
    from aal_k8s.config import load_config

    # lr 0.5 overshoots: square's best validation epoch is the first of three (checked below)
    cfg = load_config(overrides=[*tiny_overrides, "train.epochs=3", "train.lr=0.5"], dataset="synthetic")
    data = load_dataset(cfg.dataset)
    spec = plan_stage("single", cfg)[0]
    states = []

    def keep(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        states.append(torch.load(buf, weights_only=True))

    whole = train_run(spec, data, on_checkpoint=keep)
    assert whole.best_epoch == 1 and whole.history[-1]["val_acc"] != whole.val_acc
    assert whole.correct["val"].double().mean().item() == whole.val_acc["square"]
    resumed = train_run(spec, data, resume_state=states[1])  # after epoch 2: the best epoch is behind it
    for split in ("val", "test"):
        assert torch.equal(resumed.correct[split], whole.correct[split])


def test_the_worker_commits_the_predictions_beside_the_weights(tiny_cfg, tmp_path):
    from aal_k8s.worker import execute

    exp = ExperimentStore(LocalStore(str(tmp_path / "store")), tiny_cfg.experiment_name)
    spec = plan_stage("single", tiny_cfg)[0]
    exp.write_spec(spec)
    assert execute(exp.store.uri, exp.experiment, spec.run_id, log=io.StringIO()) == 0
    record = exp.read_metrics(spec.run_id)
    back = predictions.unpack(exp.read_artifact(spec.run_id, predictions.ARTIFACT))
    head = spec.primary[0]
    assert np.mean(back["val"][head]) == record["val_acc"][head]
    assert np.mean(back["test"][head]) == record["test_acc"][head]
    # what the run cost its process (the plan's calibration): this test process started before it
    timings = record["timings"]
    assert timings["process"] > timings["worker"] > timings["total"] > 0


def test_process_seconds_counts_from_the_process_start_imports_included():
    import subprocess
    import sys

    code = "import time; time.sleep(0.6); from aal_k8s.worker import process_seconds; print(process_seconds())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.6 < age < 30


def test_the_worker_writes_tensorboard_curves_of_every_epoch_into_the_store(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from aal_k8s.worker import execute

    exp = ExperimentStore(LocalStore(str(tmp_path / "store")), tiny_cfg.experiment_name)
    spec = plan_stage("pairwise", tiny_cfg)[0]
    exp.write_spec(spec)
    assert execute(exp.store.uri, exp.experiment, spec.run_id, log=io.StringIO()) == 0
    record = exp.read_metrics(spec.run_id)
    keys = [k for k in exp.store.list(exp.key("runs", spec.run_id)) if "/tensorboard/events.out.tfevents" in k]
    assert len(keys) == 1 and f"/attempts/{record['attempt']}/" in keys[0]
    acc = EventAccumulator(os.path.dirname(os.path.join(exp.store.root, keys[0])))
    acc.Reload()
    for head in spec.heads:
        curve = [(e.step, e.value) for e in acc.Scalars(f"val_acc/{head}")]
        assert curve == [(h["epoch"], pytest.approx(h["val_acc"][head])) for h in record["history"]]
        (test,) = acc.Scalars(f"test_acc/{head}")
        assert (test.step, test.value) == (record["best_epoch"], pytest.approx(record["test_acc"][head]))


def test_a_resumed_attempts_event_file_also_holds_the_epochs_it_inherited(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from aal_k8s.worker import execute

    store = LocalStore(str(tmp_path / "store"))
    spec = plan_stage("single", tiny_cfg)[0]
    earlier = ExperimentStore(store, tiny_cfg.experiment_name, attempt="earlier")
    earlier.write_spec(spec)
    states = []
    train_run(spec, load_dataset(tiny_cfg.dataset), on_checkpoint=lambda st: states.append(_bytes(st)))
    earlier.write_checkpoint(spec.run_id, 1, states[0])  # as if the earlier attempt died after epoch 1
    log = io.StringIO()
    assert execute(store.uri, tiny_cfg.experiment_name, spec.run_id, log=log) == 0
    assert "resuming after epoch 1" in log.getvalue()
    exp = ExperimentStore(store, tiny_cfg.experiment_name)
    record = exp.read_metrics(spec.run_id)
    (key,) = [k for k in store.list(exp.key("runs", spec.run_id)) if f"{record['attempt']}/tensorboard/" in k]
    acc = EventAccumulator(os.path.dirname(os.path.join(store.root, key)))
    acc.Reload()
    assert [e.step for e in acc.Scalars(f"val_acc/{spec.primary[0]}")] == [1, 2]


def _bytes(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_with_mlflow_tracking_uri_set_each_attempt_is_an_mlflow_run_with_the_curves(tiny_cfg, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from aal_k8s.worker import execute

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store keeps the test self-contained
    exp = ExperimentStore(LocalStore(str(tmp_path / "store")), tiny_cfg.experiment_name)
    spec = plan_stage("pairwise", tiny_cfg)[0]
    exp.write_spec(spec)
    assert execute(exp.store.uri, exp.experiment, spec.run_id, log=io.StringIO()) == 0
    record = exp.read_metrics(spec.run_id)
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(exp.experiment).experiment_id])
    assert run.info.run_name == spec.run_id and run.info.status == "FINISHED"
    assert run.data.params["primary"] == ",".join(spec.primary) and run.data.tags["aal_k8s.attempt"] == record["attempt"]
    head = spec.heads[0]
    curve = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"val_acc/{head}")]
    assert sorted(curve) == [(h["epoch"], pytest.approx(h["val_acc"][head])) for h in record["history"]]
    assert run.data.metrics[f"test_acc/{head}"] == pytest.approx(record["test_acc"][head])


def test_an_unreachable_mlflow_server_costs_a_log_line_not_the_run(tiny_cfg, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from aal_k8s.worker import execute

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    exp = ExperimentStore(LocalStore(str(tmp_path / "store")), tiny_cfg.experiment_name)
    spec = plan_stage("single", tiny_cfg)[0]
    exp.write_spec(spec)
    log = io.StringIO()
    assert execute(exp.store.uri, exp.experiment, spec.run_id, log=log) == 0
    assert exp.is_committed(spec.run_id)
    assert f"run {spec.run_id}: no MLflow logging (" in log.getvalue()


def test_a_tracking_server_failing_mid_run_drops_mlflow_with_one_log_line():
    from aal_k8s.events import MlflowRun, Sinks

    class Gone:
        def log_batch(self, *args, **kwargs):
            raise ConnectionError("server gone")

    sink = MlflowRun.__new__(MlflowRun)  # as opened, with a client whose server has gone away
    sink.client, sink.run_id = Gone(), "m1"
    log = io.StringIO()
    sinks = Sinks([sink], "sin-a01", log)
    entry = {"epoch": 1, "val_acc": {"a": 0.5}, "train_loss": {"a": 0.1}, "lr": 0.1, "seconds": 1.0}
    sinks.epoch(entry)
    sinks.epoch(entry)
    assert sinks.sinks == []
    assert log.getvalue() == "run sin-a01: MLflow logging stopped (ConnectionError: server gone)\n"

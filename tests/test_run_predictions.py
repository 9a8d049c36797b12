"""Every run keeps per-image correctness (val at the best epoch, test), and the worker commits it."""

import io
import os

import numpy as np
import pytest
import torch

from aal_k8s import predictions
from aal_k8s.data import load_dataset
from aal_k8s.planner import plan_stage
from aal_k8s.store import ExperimentStore, LocalStore
from aal_k8s.trainer import train_run


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

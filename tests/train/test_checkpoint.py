"""Checkpoint save/restore (aal_k8s.train.checkpoint)."""

from __future__ import annotations

import io

import pytest
import torch

from aal_k8s.data import load_dataset
from aal_k8s.planner import plan_stage
from aal_k8s.train import CHECKPOINT_FORMAT, train_run


def _saved(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_a_checkpoint_is_plain_tensors_and_resumes_only_its_own_run(tiny_cfg):
    data = load_dataset(tiny_cfg.dataset)
    single, pair = plan_stage("single", tiny_cfg)[0], plan_stage("pairwise", tiny_cfg)[0]
    states = []
    train_run(single, data, on_checkpoint=lambda s: states.append(_saved(s)))
    first = states[0]
    assert first["format"] == CHECKPOINT_FORMAT and first["run_id"] == single.run_id and first["epoch"] == 1
    # the learning rate follows from the epoch, the mode from the spec: neither is stored twice
    assert set(first) == {"format", "run_id", "epoch", "model", "optimizer", "rng", "best", "history", "timings", "step"}
    with pytest.raises(ValueError, match=rf"checkpoint is for run '{single.run_id}' format 1, not run '{pair.run_id}'"):
        train_run(pair, data, resume_state=first)
    with pytest.raises(ValueError, match="format 0, not run"):
        train_run(single, data, resume_state={**first, "format": 0})

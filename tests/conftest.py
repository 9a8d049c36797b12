"""Shared fixtures: tiny configs so that real training runs take about a second on a CPU."""

from __future__ import annotations

import pytest

from aal_k8s.config import load_config

TINY = [
    "train.epochs=2",
    "train.batch_size=32",
    "train.heads_impl=reference",
    "train.threads=1",
    "dataset.synthetic.n_train=96",
    "dataset.synthetic.n_val=64",
    "dataset.synthetic.n_test=64",
    "dataset.synthetic.image_size=16",
]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    return [*TINY, f"store.uri={tmp_path / 'store'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    return load_config(overrides=tiny_overrides, dataset="synthetic")

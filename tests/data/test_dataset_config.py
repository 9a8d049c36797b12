"""Config keys of the real datasets and the input pipeline."""

import pytest

from aal_k8s.config import load_config
from aal_k8s.errors import ConfigError


def test_defaults_and_root_not_required_to_plan():
    cfg = load_config(dataset="celeba")
    d = cfg.dataset
    assert d.root is None and d.pack == "auto" and d.strict_counts and d.val_fraction == 0.1
    assert d.augment.crop == 0.9 and d.augment.flip and cfg.train.precision == "auto" and not cfg.train.compile
    assert cfg.model.image_size == 224


def test_bad_values_are_all_reported_at_once():
    bad = ["dataset.val_fraction=1.0", "dataset.augment.crop=0", "dataset.workers=-1", "dataset.pack=' '",
           "train.precision=fp16", "train.compile=3"]  # fmt: skip
    with pytest.raises(ConfigError) as e:
        load_config(dataset="duke", overrides=bad)
    msg = e.value.message
    for key in ("dataset.val_fraction", "dataset.augment.crop", "dataset.workers", "dataset.pack",
                "train.precision", "train.compile"):  # fmt: skip
        assert key in msg, key

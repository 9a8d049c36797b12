import numpy as np
import pytest
import torch

from aal_k8s.config import load_config
from aal_k8s.data import attribute_names, load_dataset, resolve_attributes
from aal_k8s.data.synthetic import ATTRIBUTES, PLANTED
from aal_k8s.errors import DatasetError


@pytest.fixture(scope="module")
def data():
    return load_dataset(load_config(dataset="synthetic").dataset)


def test_generation_is_deterministic_from_the_seed():
    cfg = load_config(dataset="synthetic", overrides=["dataset.synthetic.n_train=50"]).dataset
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert torch.equal(a.splits["train"].images, b.splits["train"].images)
    other = load_config(dataset="synthetic", overrides=["dataset.synthetic.n_train=50", "dataset.seed=1"]).dataset
    assert not torch.equal(a.splits["train"].images, load_dataset(other).splits["train"].images)


def test_shapes_and_label_values(data):
    tr = data.splits["train"]
    assert tr.images.dtype == torch.uint8 and tr.images.shape[1:] == (3, 32, 32)
    assert tr.labels.shape == (3000, len(ATTRIBUTES))
    assert set(tr.labels.unique().tolist()) == {0.0, 1.0}


def test_planted_partner_agrees_with_its_attribute_in_train_only(data):
    for a, b in PLANTED:
        ia, ib = ATTRIBUTES.index(a), ATTRIBUTES.index(b)
        for split, lo, hi in (("train", 0.93, 0.97), ("val", 0.45, 0.55), ("test", 0.45, 0.55)):
            lab = data.splits[split].labels.numpy()
            agree = (lab[:, ia] == lab[:, ib]).mean()
            assert lo < agree < hi, (a, b, split, agree)


def test_unplanted_attributes_are_independent_in_every_split(data):
    planted = {frozenset(p) for p in PLANTED}
    for split in ("train", "val", "test"):
        lab = data.splits[split].labels.numpy()
        for i in range(len(ATTRIBUTES)):
            for j in range(i + 1, len(ATTRIBUTES)):
                if frozenset((ATTRIBUTES[i], ATTRIBUTES[j])) in planted:
                    continue
                r = np.corrcoef(lab[:, i], lab[:, j])[0, 1]
                assert abs(r) < 0.1, (split, ATTRIBUTES[i], ATTRIBUTES[j], r)


def test_tint_attributes_shift_their_colour_channel(data):
    te = data.splits["test"]
    x = te.images.float().mean(dim=(2, 3))
    for name, ch in (("red_tint", 0), ("blue_tint", 2)):
        on = te.labels[:, ATTRIBUTES.index(name)] == 1
        assert x[on, ch].mean() - x[~on, ch].mean() > 10  # about 0.05 * 255 or more


def test_attribute_names_resolve_by_name_or_index():
    assert attribute_names("synthetic") == ATTRIBUTES
    assert resolve_attributes("synthetic", ["2", "cross"]) == ["ring", "cross"]
    with pytest.raises(DatasetError, match="unknown attribute.*'Smiling'.*synthetic"):
        resolve_attributes("synthetic", ["Smiling"])

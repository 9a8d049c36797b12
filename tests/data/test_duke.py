"""DukeMTMC-attribute loader on a miniature official layout: .mat parsing, per-identity labels,
the identity-disjoint validation split, every bad input."""

import csv
import os

import numpy as np
import pytest
from realdata_fixtures import make_duke, write_jpeg
from scipy.io import loadmat, savemat

from aal_k8s.config import load_config
from aal_k8s.data import attribute_names, duke, load_dataset, resolve_attributes
from aal_k8s.errors import DatasetError

# the paper's Table 6 numbers and names the attributes: those two columns ship with the tests
PAPER_TABLE6 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "paper_table6_duke_attributes.csv")


def _cfg(root, *more):
    return load_config(dataset="duke", overrides=[f"dataset.root={root}", "dataset.strict_counts=false", *more]).dataset


def _one_line_error(root, *more) -> str:
    with pytest.raises(DatasetError) as e:
        load_dataset(_cfg(root, *more))
    assert "\n" not in e.value.message
    return e.value.message


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "DukeMTMC-reID"
    return root, make_duke(root)


def _pid(path) -> str:
    return os.path.basename(path)[:4]


def test_23_attributes_in_table6_order_known_without_data():
    names = attribute_names("duke")
    assert len(names) == 23 and names[0] == "Carrying_backpack" and names[13] == "Green_lower-body_clothes"
    assert resolve_attributes("duke", ["Carrying backpack", "8"]) == ["Carrying_backpack", "Long-sleeve_upper-body_clothes"]
    with open(PAPER_TABLE6) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"].replace(" ", "_") for r in rows] == names
    assert [int(r["att"]) for r in rows] == list(range(1, len(names) + 1))


def test_labels_are_per_identity_and_map_1_2_to_0_1(tree):
    root, truth = tree
    data = load_dataset(_cfg(root))
    for split in ("train", "val", "test"):
        sp = data.splits[split]
        table = truth["test" if split == "test" else "train"]
        for path, row in zip(sp.files, sp.labels.numpy()):
            assert np.array_equal(row, table[_pid(path)].astype(np.float32)), path
        assert sp.size == (256, 128)
    # the colours are one-hot per identity
    fields = [f for _, f in duke.FIELDS]
    for group in duke.COLOUR_GROUPS.values():
        cols = [fields.index(f) for f in group]
        assert (data.splits["test"].labels[:, cols].sum(1) == 1).all()


def test_splits_cover_the_folders_and_val_is_identity_disjoint(tree):
    root, truth = tree
    data = load_dataset(_cfg(root, "dataset.val_fraction=0.34"))
    tr, va, te = (data.splits[s] for s in ("train", "val", "test"))
    assert len(tr) + len(va) == len(truth["files"]["train"]) and len(te) == len(truth["files"]["test"])
    assert sorted(os.path.basename(f) for f in tr.files + va.files) == truth["files"]["train"]
    ids = {s: {_pid(f) for f in data.splits[s].files} for s in ("train", "val", "test")}
    assert not ids["train"] & ids["val"] and not (ids["train"] | ids["val"]) & ids["test"]
    assert len(ids["val"]) == 2  # round(0.34 * 6 train identities)
    assert ids["val"] == duke.validation_identities([_pid(f) for f in truth["files"]["train"]], 0.34, 0)


def test_validation_split_is_seeded():
    ids = [f"{i:04d}" for i in range(1, 703)]
    a = duke.validation_identities(ids, 0.1, 0)
    assert a == duke.validation_identities(ids, 0.1, 0) and len(a) == 70
    assert a != duke.validation_identities(ids, 0.1, 1)


def test_real_duke_file_names_and_attribute_subfolder_are_accepted(tmp_path):
    root = tmp_path / "duke"
    truth = make_duke(root, mat_layout="attribute")
    for split, folder in duke.IMAGE_DIRS.items():  # DukeMTMC-reID's own naming: 0001_c2_f0046182.jpg
        for name in truth["files"][split]:
            pid, cam = name[:4], name[6]
            frame = int(name.split("_")[2])
            os.rename(root / folder / name, root / folder / f"{pid}_c{cam}_f{frame:07d}.jpg")
    data = load_dataset(_cfg(root))
    assert sum(len(s) for s in data.splits.values()) == sum(len(v) for v in truth["files"].values())


def test_strict_counts_reject_a_subset(tree):
    root, _ = tree
    msg = _one_line_error(root, "dataset.strict_counts=true")
    assert "duke_attribute.mat" in msg and "6 train identities, expected 702" in msg
    assert duke.EXPECTED_IMAGES == {"train": 16_522, "test": 17_661}


def _edit_mat(root, fn):
    path = os.path.join(root, duke.MAT_FILE)
    m = loadmat(path, simplify_cells=True)
    fn(m["duke_attribute"])
    savemat(path, {"duke_attribute": m["duke_attribute"]})


def _set(split, field, value):
    def fn(top):
        top[split][field] = value

    return fn


def _drop(split, field):
    def fn(top):
        del top[split][field]

    return fn


def _two_colours(top):
    top["test"]["upblack"][0] = 2
    top["test"]["upwhite"][0] = 2


BAD = [
    ("missing mat", lambda r: os.unlink(r / duke.MAT_FILE), "duke_attribute.mat: missing attribute file"),
    ("not a mat", lambda r: (r / duke.MAT_FILE).write_bytes(b"garbage"), "duke_attribute.mat: not a readable MATLAB file"),
    ("no struct", lambda r: savemat(r / duke.MAT_FILE, {"other": np.ones(3)}), "duke_attribute.mat: no struct 'duke_attribute' (found: other)"),
    ("no test", lambda r: _edit_mat(r, lambda top: top.pop("test")), "duke_attribute has no struct 'test'"),
    ("field missing", lambda r: _edit_mat(r, _drop("train", "hat")), "duke_attribute.train has no field 'hat'"),
    ("wrong length", lambda r: _edit_mat(r, _set("train", "bag", np.ones(5))), "duke_attribute.train.bag has 5 values for 6 identities"),
    ("value 3", lambda r: _edit_mat(r, _set("test", "boots", np.array([1, 2, 3.0]))), "duke_attribute.test.boots: values must be 1 (no) or 2 (yes), found 3"),
    ("bad id", lambda r: _edit_mat(r, _set("train", "image_index", np.array(["0001", "x", "0003", "0005", "0008", "0009"], dtype=object))), "image_index holds 'x'"),
    ("two colours", lambda r: _edit_mat(r, _two_colours), "test identity 0004 has 2 upper-body colours (upblack, upwhite)"),
    ("no image folder", lambda r: os.rename(r / "bounding_box_test", r / "test"), "bounding_box_test: missing test image folder"),
    ("unknown identity", lambda r: write_jpeg(str(r / "bounding_box_train" / "0077_c1s1_000001_01.jpg"), 64, 128, 1), "0077_c1s1_000001_01.jpg: identity 0077 has no attributes in duke_attribute.mat (train)"),
    ("bad name", lambda r: write_jpeg(str(r / "bounding_box_test" / "person.jpg"), 64, 128, 1), "person.jpg: name does not start with a 4-digit identity and camera"),
]  # fmt: skip


@pytest.mark.parametrize("what, damage, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_the_file(tree, what, damage, fragment):
    root, _ = tree
    damage(root)
    assert fragment in _one_line_error(root)

"""CelebA loader on a miniature official layout: parsing, labels, splits, every bad input."""

import csv
import os

import numpy as np
import pytest
import torch
from realdata_fixtures import make_celeba, write_jpeg

from aal_k8s.config import load_config
from aal_k8s.data import attribute_names, celeba, load_dataset, resolve_attributes
from aal_k8s.data.common import decode_image
from aal_k8s.errors import DatasetError

# the paper's Table 3 numbers and names the attributes: those two columns ship with the tests
PAPER_TABLE3 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "paper_table3_celeba_attributes.csv")


def _cfg(root, *more):
    return load_config(dataset="celeba", overrides=[f"dataset.root={root}", "dataset.strict_counts=false", *more]).dataset


def _one_line_error(root, *more) -> str:
    with pytest.raises(DatasetError) as e:
        load_dataset(_cfg(root, *more))
    msg = e.value.message
    assert "\n" not in msg
    return msg


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "celeba"
    return root, make_celeba(root)


def test_forty_attributes_in_the_official_order_known_without_data():
    names = attribute_names("celeba")
    assert len(names) == 40 and names[0] == "5_o_Clock_Shadow" and names[-1] == "Young"
    # the paper numbers them 1..40: 7 Big_Lips, 13 Bushy_Eyebrows, 22 Mouth_Slightly_Open
    assert resolve_attributes("celeba", ["7", "13", "22"]) == ["Big_Lips", "Bushy_Eyebrows", "Mouth_Slightly_Open"]
    with open(PAPER_TABLE3) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == names
    assert [int(r["att"]) for r in rows] == list(range(1, len(names) + 1))


def test_labels_map_minus_one_to_zero_and_splits_follow_the_partition_file(tree):
    root, truth = tree
    data = load_dataset(_cfg(root))
    assert data.attributes == celeba.ATTRIBUTES and data.mean == (0.485, 0.456, 0.406)
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 5, "val": 2, "test": 3}
    for code, split in enumerate(("train", "val", "test")):
        idx = [i for i, p in enumerate(truth["partition"]) if p == code]
        sp = data.splits[split]
        assert [os.path.basename(f) for f in sp.files] == [truth["files"][i] for i in idx]
        expected = (truth["labels"][idx] == 1).astype(np.float32)
        assert sp.labels.dtype == torch.float32 and np.array_equal(sp.labels.numpy(), expected)
        assert sp.size == (218, 178) and sp.images is None  # decoded on the fly (no pack)


def test_decoded_images_are_native_218x178_rgb(tree):
    root, truth = tree
    img = decode_image(str(root / "img_align_celeba" / truth["files"][0]), celeba.IMAGE_SIZE, resize=False)
    assert img.dtype == torch.uint8 and img.shape == (3, 218, 178)


def test_strict_counts_reject_a_subset(tree):
    root, _ = tree
    msg = _one_line_error(root, "dataset.strict_counts=true")
    assert "list_eval_partition.txt" in msg and "5 train images, expected 162,770" in msg
    assert celeba.EXPECTED == {"train": 162_770, "val": 19_867, "test": 19_962}


def _rewrite(path, fn):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


BAD = [
    ("missing attribute file", lambda r: os.unlink(r / "list_attr_celeba.txt"), "list_attr_celeba.txt: missing attribute file"),
    ("missing partition file", lambda r: os.unlink(r / "list_eval_partition.txt"), "list_eval_partition.txt: missing partition file"),
    ("missing image folder", lambda r: os.rename(r / "img_align_celeba", r / "imgs"), "img_align_celeba: missing image folder"),
    ("missing image", lambda r: os.unlink(r / "img_align_celeba" / "000004.jpg"), "000004.jpg: missing image file (1 of 10"),
    ("count line", lambda r: _rewrite(r / "list_attr_celeba.txt", lambda ls: ["11", *ls[1:]]), "line 1 announces 11 images but 10 rows follow"),
    ("count not a number", lambda r: _rewrite(r / "list_attr_celeba.txt", lambda ls: ["ten", *ls[1:]]), "list_attr_celeba.txt line 1: expected the image count"),
    ("names", lambda r: _rewrite(r / "list_attr_celeba.txt", lambda ls: [ls[0], ls[1].replace("Big_Lips", "Lips"), *ls[2:]]), "list_attr_celeba.txt line 2: expected the 40 CelebA attribute names"),
    ("value 0", lambda r: _rewrite(r / "list_attr_celeba.txt", lambda ls: [*ls[:4], ls[4].replace("-1", " 0", 1), *ls[5:]]), "list_attr_celeba.txt line 5: expected a file name and 40 values of -1 or 1"),
    ("39 values", lambda r: _rewrite(r / "list_attr_celeba.txt", lambda ls: [*ls[:3], ls[3].rsplit(" ", 1)[0], *ls[4:]]), "list_attr_celeba.txt line 4: expected a file name and 40 values"),
    ("duplicate row", lambda r: _rewrite(r / "list_attr_celeba.txt", lambda ls: ["11", *ls[1:], ls[2]]), "000001.jpg is listed twice"),
    ("partition code", lambda r: _rewrite(r / "list_eval_partition.txt", lambda ls: [*ls[:2], ls[2][:-1] + "3", *ls[3:]]), "list_eval_partition.txt line 3: expected a file name and 0, 1 or 2"),
    ("partition unknown file", lambda r: _rewrite(r / "list_eval_partition.txt", lambda ls: [*ls, "999999.jpg 0"]), "list_eval_partition.txt: 999999.jpg has no row in list_attr_celeba.txt"),
    ("partition misses a file", lambda r: _rewrite(r / "list_eval_partition.txt", lambda ls: ls[1:]), "list_eval_partition.txt: 000001.jpg from list_attr_celeba.txt is missing"),
]  # fmt: skip


@pytest.mark.parametrize("what, damage, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_the_file(tree, what, damage, fragment):
    root, _ = tree
    damage(root)
    assert fragment in _one_line_error(root)


def test_missing_or_unset_root(tmp_path):
    msg = _one_line_error(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in msg and "does not exist" in msg
    with pytest.raises(DatasetError, match="dataset.root is not set") as e:
        load_dataset(load_config(dataset="celeba").dataset)
    assert "\n" not in e.value.message


def test_unreadable_and_wrong_size_images_name_the_file(tree):
    root, truth = tree
    bad = root / "img_align_celeba" / truth["files"][1]
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match=rf"{truth['files'][1]}: unreadable image") as e:
        decode_image(str(bad), celeba.IMAGE_SIZE, resize=False)
    assert "\n" not in e.value.message
    write_jpeg(str(bad), 100, 100, 0)
    with pytest.raises(DatasetError, match=r"image is 100x100 pixels \(width x height\), expected 178x218"):
        decode_image(str(bad), celeba.IMAGE_SIZE, resize=False)

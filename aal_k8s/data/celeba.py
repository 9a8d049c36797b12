"""CelebA (Liu et al., 2015): 40 binary face attributes, official aligned-and-cropped images.

Expected layout under ``dataset.root`` (the official distribution)::

    img_align_celeba/000001.jpg ... 202599.jpg   178x218 (width x height) JPEGs
    list_attr_celeba.txt                          line 1: image count; line 2: the 40 names;
                                                  then "<file> v1 ... v40" with v in {-1, 1}
    list_eval_partition.txt                       "<file> 0|1|2" (train / val / test)

Labels map -1 -> 0 and 1 -> 1. The official split is 162,770 / 19,867 / 19,962 images; with
``dataset.strict_counts`` (the default) other counts are an error. Images keep their native
218x178 resolution (also in packs); the input pipeline crops, flips and resizes on the device.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from aal_k8s.data.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Part,
    check_count,
    fmt_count,
    preview,
    require_dir,
    require_file,
)
from aal_k8s.data.sources import load_real
from aal_k8s.errors import DatasetError

NAME = "celeba"

#: The 40 attributes in the official order of list_attr_celeba.txt (numbered 1..40 in the paper).
ATTRIBUTES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald",
    "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair",
    "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
]  # fmt: skip

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD

IMAGE_SIZE = (218, 178)  # (height, width) of every aligned image; also the pack resolution
RESIZE = False  # an image of another size is an error, not silently resized

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
LAYOUT = f"a folder with {IMAGE_DIR}/, {ATTR_FILE} and {PARTITION_FILE}"

SPLITS = ("train", "val", "test")  # partition codes 0, 1, 2
EXPECTED = {"train": 162_770, "val": 19_867, "test": 19_962}


def _lines(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a text file") from None


def parse_attributes(path: str) -> tuple[list[str], np.ndarray]:
    """(file names, uint8 labels [N, 40]) of list_attr_celeba.txt, every line checked."""
    lines = _lines(path)
    if not lines or not lines[0].strip().isdigit():
        got = preview(lines[0]) if lines else "an empty file"
        raise DatasetError(f"{path} line 1: expected the image count, got {got}")
    count = int(lines[0].strip())
    names = lines[1].split() if len(lines) > 1 else []
    if names != ATTRIBUTES:
        diff = next((i for i, (a, b) in enumerate(zip(names, ATTRIBUTES)) if a != b), min(len(names), 40))
        got = repr(names[diff]) if diff < len(names) else "nothing"
        raise DatasetError(
            f"{path} line 2: expected the 40 CelebA attribute names in the official order, "
            f"got {len(names)} names ({got} where {ATTRIBUTES[diff] if diff < 40 else 'the end'!r} belongs)"
        )
    files: list[str] = []
    rows = []
    for no, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 41 or any(v not in ("-1", "1") for v in parts[1:]):
            raise DatasetError(f"{path} line {no}: expected a file name and 40 values of -1 or 1, got {preview(line)}")
        files.append(parts[0])
        rows.append([v == "1" for v in parts[1:]])
    if len(files) != count:
        raise DatasetError(f"{path}: line 1 announces {fmt_count(count)} images but {fmt_count(len(files))} rows follow")
    if len(set(files)) != len(files):
        dup = next(f for i, f in enumerate(files) if f in files[:i])
        raise DatasetError(f"{path}: {dup} is listed twice")
    labels = np.asarray(rows, dtype=np.uint8).reshape(len(files), len(ATTRIBUTES))
    return files, labels


def parse_partition(path: str) -> dict[str, int]:
    """file name -> 0 (train), 1 (val) or 2 (test)."""
    out: dict[str, int] = {}
    for no, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DatasetError(f"{path} line {no}: expected a file name and 0, 1 or 2, got {preview(line)}")
        if parts[0] in out:
            raise DatasetError(f"{path} line {no}: {parts[0]} is listed twice")
        out[parts[0]] = int(parts[1])
    return out


def read_source(root: str, strict: bool) -> dict[str, Part]:
    """The official train/val/test splits of the folder ``root`` (files in list order)."""
    attr_path, part_path = os.path.join(root, ATTR_FILE), os.path.join(root, PARTITION_FILE)
    image_dir = os.path.join(root, IMAGE_DIR)
    require_file(attr_path, "attribute file")
    require_file(part_path, "partition file")
    require_dir(image_dir, "image")
    files, labels = parse_attributes(attr_path)
    partition = parse_partition(part_path)
    listed = set(files)
    unlabelled = [f for f in partition if f not in listed]
    if unlabelled:
        raise DatasetError(
            f"{part_path}: {unlabelled[0]} has no row in {ATTR_FILE} ({fmt_count(len(unlabelled))} such images)"
        )
    unsplit = [f for f in files if f not in partition]
    if unsplit:
        raise DatasetError(
            f"{part_path}: {unsplit[0]} from {ATTR_FILE} is missing ({fmt_count(len(unsplit))} such images)"
        )
    present = set(os.listdir(image_dir))
    missing = [f for f in files if f not in present]
    if missing:
        raise DatasetError(
            f"{os.path.join(image_dir, missing[0])}: missing image file "
            f"({fmt_count(len(missing))} of {fmt_count(len(files))} listed images are missing)"
        )
    code = np.array([partition[f] for f in files])
    parts = {}
    for i, split in enumerate(SPLITS):
        idx = np.flatnonzero(code == i)
        check_count(part_path, f"{split} images", len(idx), EXPECTED[split], strict)
        if len(idx) == 0:
            raise DatasetError(f"{part_path}: no {split} images (partition code {i})")
        parts[split] = Part(
            names=[os.path.join(IMAGE_DIR, files[j]) for j in idx], labels=labels[idx], root=root
        )
    return parts


def final_splits(cfg, parts: dict[str, Part]):
    """CelebA's official split is used as it is."""
    return {s: parts[s].split(IMAGE_SIZE) for s in SPLITS}


def load(cfg, store=None):
    return load_real(cfg, store, sys.modules[__name__])

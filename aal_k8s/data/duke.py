"""DukeMTMC-attribute (Lin et al., 2019): 23 binary pedestrian attributes over DukeMTMC-reID.

Expected layout under ``dataset.root`` (the DukeMTMC-reID folder with the attribute file)::

    bounding_box_train/0001_c2_f0046182.jpg ...   16,522 images of 702 identities
    bounding_box_test/...                          17,661 images of 1,110 identities
    duke_attribute.mat                             (or attribute/duke_attribute.mat)

Image names start with the 4-digit identity and the camera (``{pid}_c{cam}...jpg``).
``duke_attribute.mat`` holds a struct ``duke_attribute`` with fields ``train`` and ``test``, each a
struct with one 1 x n_identities vector per attribute (1 = no, 2 = yes; gender 1 = male, 2 =
female; shoes 1 = dark, 2 = light; top 1 = short, 2 = long sleeves) and ``image_index``, the
identities' 4-digit ids. Labels are per identity and apply to every image of it; 1 -> 0, 2 -> 1.
The colour attributes are one-hot per identity: at most one upper-body and one lower-body colour.

The paper has no validation split: ``final_splits`` holds out ``dataset.val_fraction`` of the
train *identities* (seeded by ``dataset.seed``), so model selection never sees a test identity
and no identity is in both train and val. Images are resized to 256x128 (height x width) when
decoded, in packs too; the input pipeline then crops, flips and resizes to the model size.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np

from aal_k8s.data.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Part,
    check_count,
    images_in,
    require_dir,
)
from aal_k8s.data.sources import load_real
from aal_k8s.errors import DatasetError

NAME = "duke"

#: (attribute name, field in duke_attribute.mat), in the order of the paper's Table 6 (1..23).
FIELDS = [
    ("Carrying_backpack", "backpack"),
    ("Carrying_bag", "bag"),
    ("Carrying_handbag", "handbag"),
    ("Wearing_boots", "boots"),
    ("Gender", "gender"),  # 1 = female (the file's 2)
    ("Wearing_hat", "hat"),
    ("Light-color_shoes", "shoes"),
    ("Long-sleeve_upper-body_clothes", "top"),
    ("Black_lower-body_clothes", "downblack"),
    ("White_lower-body_clothes", "downwhite"),
    ("Red_lower-body_clothes", "downred"),
    ("Gray_lower-body_clothes", "downgray"),
    ("Blue_lower-body_clothes", "downblue"),
    ("Green_lower-body_clothes", "downgreen"),
    ("Brown_lower-body_clothes", "downbrown"),
    ("Black_upper-body_clothes", "upblack"),
    ("White_upper-body_clothes", "upwhite"),
    ("Red_upper-body_clothes", "upred"),
    ("Purple_upper-body_clothes", "uppurple"),
    ("Gray_upper-body_clothes", "upgray"),
    ("Blue_upper-body_clothes", "upblue"),
    ("Green_upper-body_clothes", "upgreen"),
    ("Brown_upper-body_clothes", "upbrown"),
]
ATTRIBUTES = [name for name, _ in FIELDS]
COLOUR_GROUPS = {
    "lower-body": [f for _, f in FIELDS if f.startswith("down")],
    "upper-body": [f for _, f in FIELDS if f.startswith("up")],
}

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD

IMAGE_SIZE = (256, 128)  # (height, width) every image is resized to when decoded (and packed)
RESIZE = True

MAT_FILE = "duke_attribute.mat"
IMAGE_DIRS = {"train": "bounding_box_train", "test": "bounding_box_test"}
LAYOUT = f"the DukeMTMC-reID folder with bounding_box_train/, bounding_box_test/ and {MAT_FILE}"

SPLITS = ("train", "test")  # official splits (packed); validation is carved from train by identity
EXPECTED_IMAGES = {"train": 16_522, "test": 17_661}
EXPECTED_IDENTITIES = {"train": 702, "test": 1_110}
VAL_SEED_TAG = 0xD0CE  # mixed with dataset.seed for the identity-disjoint validation split

_NAME_RE = re.compile(r"^(\d{4})_c(\d+)")


def mat_path(root: str) -> str:
    for rel in (MAT_FILE, os.path.join("attribute", MAT_FILE)):
        if os.path.isfile(os.path.join(root, rel)):
            return os.path.join(root, rel)
    raise DatasetError(f"{os.path.join(root, MAT_FILE)}: missing attribute file (also looked in attribute/)")


def _identity(value) -> str:
    """A MATLAB image_index entry (char array, string or number) as a 4-digit id."""
    v = value
    while isinstance(v, (np.ndarray, list, tuple)) and np.size(v) == 1:
        v = v.item() if isinstance(v, np.ndarray) else v[0]
    if isinstance(v, (int, np.integer, float, np.floating)) and float(v).is_integer():
        return f"{int(v):04d}"
    s = str(v).strip()
    if s.isdigit():
        return f"{int(s):04d}"
    raise ValueError(repr(v))


def parse_mat(path: str, strict: bool) -> dict[str, dict[str, np.ndarray]]:
    """{"train"|"test": {4-digit identity: uint8 labels [23]}} from duke_attribute.mat."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, simplify_cells=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
        raise DatasetError(f"{path}: not a readable MATLAB file ({reason})") from None
    top = mat.get("duke_attribute")
    if not isinstance(top, dict):
        found = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise DatasetError(f"{path}: no struct 'duke_attribute' (found: {found})")
    out = {}
    for split in SPLITS:
        s = top.get(split)
        if not isinstance(s, dict):
            raise DatasetError(f"{path}: duke_attribute has no struct {split!r} (fields: {', '.join(top)})")
        absent = [f for f in ["image_index", *(f for _, f in FIELDS)] if f not in s]
        if absent:
            raise DatasetError(f"{path}: duke_attribute.{split} has no field {absent[0]!r} ({len(absent)} missing)")
        raw_ids = list(np.atleast_1d(np.asarray(s["image_index"], dtype=object)).ravel())
        try:
            ids = [_identity(v) for v in raw_ids]
        except ValueError as e:
            raise DatasetError(f"{path}: duke_attribute.{split}.image_index holds {e}, not a 4-digit identity") from None
        if len(set(ids)) != len(ids):
            dup = next(i for k, i in enumerate(ids) if i in ids[:k])
            raise DatasetError(f"{path}: duke_attribute.{split}.image_index lists identity {dup} twice")
        check_count(path, f"{split} identities", len(ids), EXPECTED_IDENTITIES[split], strict)
        cols = []
        for _, field in FIELDS:
            v = np.atleast_1d(np.asarray(s[field])).ravel()
            if v.size != len(ids):
                raise DatasetError(
                    f"{path}: duke_attribute.{split}.{field} has {v.size} values for {len(ids)} identities"
                )
            if not np.issubdtype(v.dtype, np.number) or not np.isin(v, (1, 2)).all():
                bad = next((x for x in v.tolist() if x not in (1, 2)), v.dtype)
                raise DatasetError(
                    f"{path}: duke_attribute.{split}.{field}: values must be 1 (no) or 2 (yes), found {bad!r}"
                )
            cols.append(v == 2)
        labels = np.stack(cols, axis=1).astype(np.uint8)  # [n_ids, 23]
        fields = [f for _, f in FIELDS]
        for group, members in COLOUR_GROUPS.items():
            sub = labels[:, [fields.index(f) for f in members]]
            over = np.flatnonzero(sub.sum(1) > 1)
            if over.size:
                i = int(over[0])
                on = [m for m, x in zip(members, sub[i]) if x]
                raise DatasetError(
                    f"{path}: {split} identity {ids[i]} has {len(on)} {group} colours ({', '.join(on)}); "
                    "the colours are one-hot per identity"
                )
        out[split] = dict(zip(ids, labels))
    return out


def read_source(root: str, strict: bool) -> dict[str, Part]:
    """The official train and test splits (images sorted by name, labels of their identity)."""
    table = parse_mat(mat_path(root), strict)
    parts = {}
    for split in SPLITS:
        folder = os.path.join(root, IMAGE_DIRS[split])
        require_dir(folder, f"{split} image")
        names = images_in(folder)
        if not names:
            raise DatasetError(f"{folder}: no images")
        check_count(folder, "images", len(names), EXPECTED_IMAGES[split], strict)
        rows = []
        for n in names:
            m = _NAME_RE.match(n)
            if m is None:
                raise DatasetError(
                    f"{os.path.join(folder, n)}: name does not start with a 4-digit identity and camera "
                    "(expected e.g. 0001_c2_f0046182.jpg)"
                )
            labels = table[split].get(m.group(1))
            if labels is None:
                raise DatasetError(
                    f"{os.path.join(folder, n)}: identity {m.group(1)} has no attributes in {MAT_FILE} ({split})"
                )
            rows.append(labels)
        parts[split] = Part(
            names=[os.path.join(IMAGE_DIRS[split], n) for n in names],
            labels=np.stack(rows).astype(np.uint8),
            root=root,
        )
    return parts


def identity_of(name: str) -> str:
    """The 4-digit identity of an image path (``.../0001_c2_...jpg`` -> ``0001``)."""
    return os.path.basename(name)[:4]


def validation_identities(train_ids: list[str], fraction: float, seed: int) -> set[str]:
    """The train identities held out for validation: ``round(fraction * n)`` (at least 1) of the
    sorted distinct identities, drawn by ``numpy.random.default_rng([seed, 0xD0CE])``."""
    ids = sorted(set(train_ids))
    if len(ids) < 2:
        raise DatasetError(f"duke: {len(ids)} train identity, need at least 2 to carve a validation split")
    n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    rng = np.random.default_rng([seed, VAL_SEED_TAG])
    return {ids[i] for i in rng.permutation(len(ids))[:n_val]}


def final_splits(cfg, parts: dict[str, Part]):
    """train minus the held-out identities, val = their images, test = the official test split."""
    train = parts["train"]
    pids = [identity_of(n) for n in train.names]
    val_ids = validation_identities(pids, cfg.val_fraction, cfg.seed)
    in_val = np.array([p in val_ids for p in pids])
    return {
        "train": train.split(IMAGE_SIZE, np.flatnonzero(~in_val)),
        "val": train.split(IMAGE_SIZE, np.flatnonzero(in_val)),
        "test": parts["test"].split(IMAGE_SIZE),
    }


def load(cfg, store=None):
    return load_real(cfg, store, sys.modules[__name__])

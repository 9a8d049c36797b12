"""Miniature CelebA and DukeMTMC-attribute folders in the exact official on-disk formats."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from aal_k8s.data import celeba, duke


def write_jpeg(path, width: int, height: int, seed: int) -> None:
    """A smooth random RGB picture (JPEG-friendly, so decoding is stable)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, format="JPEG", quality=90)


def make_celeba(root, counts=(5, 2, 3), seed: int = 0) -> dict:
    """img_align_celeba/ + list_attr_celeba.txt + list_eval_partition.txt; returns
    {"files": [...], "labels": int array of -1/1 [N, 40], "partition": [0|1|2...]}."""
    root = str(root)
    rng = np.random.default_rng(seed)
    n = sum(counts)
    files = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    partition = [p for p, c in enumerate(counts) for _ in range(c)]
    order = rng.permutation(n)  # splits interleaved, as in no real file but a harder test
    partition = [partition[i] for i in order]
    values = np.where(rng.random((n, 40)) < 0.4, 1, -1)
    for i, f in enumerate(files):
        write_jpeg(os.path.join(root, "img_align_celeba", f), 178, 218, seed * 1000 + i)
    with open(os.path.join(root, "list_attr_celeba.txt"), "w") as fh:
        fh.write(f"{n}\n")
        fh.write(" ".join(celeba.ATTRIBUTES) + " \n")  # the official file ends the line with a space
        for f, row in zip(files, values):
            fh.write(f + " " + " ".join(f"{v:2d}" for v in row) + "\n")  # "-1  1" column alignment
    with open(os.path.join(root, "list_eval_partition.txt"), "w") as fh:
        for f, p in zip(files, partition):
            fh.write(f"{f} {p}\n")
    return {"files": files, "labels": values, "partition": partition}


def duke_name(pid: int, cam: int, frame: int) -> str:
    return f"{pid:04d}_c{cam}s1_{frame:06d}_01.jpg"


def make_duke(root, train_ids=(1, 2, 3, 5, 8, 9), test_ids=(4, 6, 7), per_id=(2, 3), seed: int = 0,
              mat_layout: str = "root") -> dict:
    """bounding_box_train/, bounding_box_test/ and duke_attribute.mat (scipy.io.savemat, struct
    duke_attribute with train/test structs of 1 x n vectors, 1 = no / 2 = yes, and image_index);
    returns {"train"/"test": {pid "0001": labels 0/1 [23]}, "files": {split: [names]}}."""
    from scipy.io import savemat

    root = str(root)
    rng = np.random.default_rng(seed)
    fields = [f for _, f in duke.FIELDS]
    out = {"files": {}}
    mat = {}
    for split, ids in (("train", train_ids), ("test", test_ids)):
        table = {}
        struct = {}
        labels = (rng.random((len(ids), 23)) < 0.4).astype(np.uint8)
        for group in duke.COLOUR_GROUPS.values():  # exactly one colour per identity and body part
            cols = [fields.index(f) for f in group]
            labels[:, cols] = 0
            labels[np.arange(len(ids)), rng.choice(cols, len(ids))] = 1
        for j, f in enumerate(fields):
            struct[f] = (labels[:, j] + 1).astype(np.float64).reshape(1, -1)  # MATLAB doubles 1/2
        struct["image_index"] = np.array([f"{p:04d}" for p in ids], dtype=object).reshape(1, -1)  # cell
        mat[split] = struct
        names = []
        for k, pid in enumerate(ids):
            table[f"{pid:04d}"] = labels[k]
            for m in range(per_id[k % len(per_id)]):
                name = duke_name(pid, 1 + m % 8, 1000 * pid + m)
                w, h = (64 + 8 * (m % 3), 128 + 16 * (m % 2))  # varied sizes, resized when decoded
                write_jpeg(os.path.join(root, duke.IMAGE_DIRS[split], name), w, h, seed * 10_000 + pid * 100 + m)
                names.append(name)
        out[split] = table
        out["files"][split] = sorted(names)
    mat_dir = root if mat_layout == "root" else os.path.join(root, "attribute")
    os.makedirs(mat_dir, exist_ok=True)
    savemat(os.path.join(mat_dir, duke.MAT_FILE), {"duke_attribute": {"test": mat["test"], "train": mat["train"]}})
    return out

"""A synthetic attribute dataset with planted negative transfer, deterministic from a seed.

Six binary attributes, each a distinct visual feature on a noisy 32x32 RGB image:

    1 square      a small filled square in the top-left quadrant
    2 ring        a ring (circle outline) in the bottom-right quadrant
    3 h_stripes   stripes in the top-right quadrant are horizontal (1) or vertical (0)
    4 cross       a thin cross in the bottom-left quadrant
    5 red_tint    the whole image is tinted red
    6 blue_tint   the whole image is tinted blue

Planted negative-transfer pairs (attribute a <- harmful partner b), see ``PLANTED``:

    square <- red_tint,   ring <- blue_tint

Why they hurt: in the *train* split only, a's labels carry ``label_noise`` (15%) flips, and b's
label agrees with a's (noisy) label ``agreement`` (95%) of the time. b is a global tint, far easier
to see than a's small local shape, and in train it predicts a's label better than a's own visible
feature does. In val and test every attribute is drawn independently and labels are clean.
A network whose shared representation encodes b (it must, when b has its own head: multi-task)
lets a's head take the tint shortcut, which is useless at test time: negative transfer. A
representation made invariant to b (AAL's auxiliary head behind gradient reversal) leaves a's head
only a's true feature, so it beats even single-task training, which still sees the tint.
Attributes 3 and 4 are independent of everything in every split; they show that AAL does no harm
where no transfer was planted.
"""

from __future__ import annotations

import numpy as np
import torch

from aal_k8s.data import LoadedDataset, Split

ATTRIBUTES = ["square", "ring", "h_stripes", "cross", "red_tint", "blue_tint"]

MEAN = (0.45, 0.42, 0.45)  # close to the generated images' channel means
STD = (0.17, 0.16, 0.17)

#: (attribute a, partner b): b is correlated with a in train only and visually much easier.
PLANTED = [("square", "red_tint"), ("ring", "blue_tint")]

_TINT = 0.06  # added to one colour channel for the tint attributes
_NOISE = 0.10  # per-pixel Gaussian noise
_SHAPE_CONTRAST = 0.5  # brightness of shapes above the background


def _labels(rng: np.random.Generator, n: int, train: bool, noise: float, agree: float) -> tuple:
    """(true feature presence [n, M], labels [n, M]); labels differ from truth only on planted a."""
    m = len(ATTRIBUTES)
    truth = rng.random((n, m)) < 0.5
    labels = truth.copy()
    if train:
        idx = {name: i for i, name in enumerate(ATTRIBUTES)}
        for a, b in PLANTED:
            ia, ib = idx[a], idx[b]
            flip = rng.random(n) < noise
            labels[:, ia] = truth[:, ia] ^ flip
            same = rng.random(n) < agree
            truth[:, ib] = np.where(same, labels[:, ia], ~labels[:, ia])
            labels[:, ib] = truth[:, ib]
    return truth, labels


def _render(rng: np.random.Generator, truth: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, 3, size, size] images showing each true feature."""
    n = truth.shape[0]
    s, q = size, size // 2
    img = rng.uniform(0.25, 0.55, (n, 1, 1, 1)) + rng.normal(0.0, _NOISE, (n, 3, s, s))
    yy, xx = np.mgrid[0:s, 0:s]

    def jitter(lo, hi):
        return rng.integers(lo, max(lo + 1, hi), n)  # tiny images: no room to move

    contrast = _SHAPE_CONTRAST * rng.uniform(0.7, 1.3, n)
    # 1 square: 5x5 at a random spot of the top-left quadrant
    side = max(3, s // 6)
    y0, x0 = jitter(1, q - side), jitter(1, q - side)
    for i in np.flatnonzero(truth[:, 0]):
        img[i, :, y0[i] : y0[i] + side, x0[i] : x0[i] + side] += contrast[i]
    # 2 ring in the bottom-right quadrant
    r = max(3, s // 8)
    cy, cx = q + jitter(r + 1, q - r - 1), q + jitter(r + 1, q - r - 1)
    for i in np.flatnonzero(truth[:, 1]):
        d = np.sqrt((yy - cy[i]) ** 2 + (xx - cx[i]) ** 2)
        img[i, :, (d > r - 1.3) & (d < r + 1.0)] += contrast[i]  # a band ~2 px wide
    # 3 stripes in the top-right quadrant: horizontal when set, vertical otherwise
    period = max(2, s // 10)
    phase = jitter(0, 2 * period)
    region = (slice(2, q - 2), slice(q + 2, s - 2))
    coord = np.where(truth[:, 2, None, None], yy, xx)  # [n, s, s]
    stripes = ((coord + phase[:, None, None]) // period) % 2 == 0
    img[:, :, region[0], region[1]] += 0.25 * stripes[:, None, region[0], region[1]]
    # 4 cross in the bottom-left quadrant
    arm = max(2, s // 10)
    cy, cx = q + jitter(arm + 1, q - arm - 1), jitter(arm + 1, q - arm - 1)
    for i in np.flatnonzero(truth[:, 3]):
        img[i, :, cy[i] - arm : cy[i] + arm + 1, cx[i]] += contrast[i]
        img[i, :, cy[i], cx[i] - arm : cx[i] + arm + 1] += contrast[i]
    # 5, 6 global tints on the red and blue channels
    img[truth[:, 4], 0] += _TINT
    img[truth[:, 5], 2] += _TINT
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def generate(cfg, split: str) -> Split:
    """One split, deterministic in (seed, split, sizes, noise, agreement)."""
    sc = cfg.synthetic
    n = {"train": sc.n_train, "val": sc.n_val, "test": sc.n_test}[split]
    offset = {"train": 0, "val": 1, "test": 2}[split]
    rng = np.random.default_rng([cfg.seed, offset, 0xAA1])
    truth, labels = _labels(rng, n, split == "train", sc.label_noise, sc.agreement)
    images = _render(rng, truth, sc.image_size)
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.float32)))


def load(cfg, store=None) -> LoadedDataset:
    splits = {name: generate(cfg, name) for name in ("train", "val", "test")}
    return LoadedDataset(
        name="synthetic",
        attributes=list(ATTRIBUTES),
        splits=splits,
        mean=MEAN,
        std=STD,
        transform=False,  # no augmentation or resizing: the features are placed pixel-exactly
        source="generated",
    )

"""Dataset interface: attribute names known offline, splits of uint8 images + {0,1} labels.

Every dataset module exposes ``ATTRIBUTES`` (names in the dataset's official order, so planning
works without the data), ``MEAN``/``STD`` (input normalisation) and
``load(cfg: DatasetConfig) -> LoadedDataset``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from aal_k8s.errors import DatasetError

DATASETS = {
    "synthetic": "aal_k8s.data.synthetic",
}


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # float32 [N, M] in {0, 1}

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class LoadedDataset:
    name: str
    attributes: list[str]
    splits: dict[str, Split]  # "train", "val", "test"
    mean: tuple[float, float, float]  # per-channel normalisation on [0, 1] pixels
    std: tuple[float, float, float]


def _module(name: str):
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    return importlib.import_module(DATASETS[name])


def attribute_names(name: str) -> list[str]:
    """The dataset's attribute names in official order, without touching the data."""
    return list(_module(name).ATTRIBUTES)


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of [0, 1] pixels that the dataset's models are trained with."""
    mod = _module(name)
    return tuple(mod.MEAN), tuple(mod.STD)


def load_dataset(cfg) -> LoadedDataset:
    """Load (or generate) all splits of ``cfg.name`` (a ``DatasetConfig``)."""
    return _module(cfg.name).load(cfg)


def resolve_attributes(dataset: str, names: list[str]) -> list[str]:
    """Validate user-given attribute names (or 1-based indices) against the dataset; all errors at once."""
    known = attribute_names(dataset)
    out, bad = [], []
    for n in names:
        if n.isdigit() and 1 <= int(n) <= len(known):
            out.append(known[int(n) - 1])
        elif n in known:
            out.append(n)
        else:
            bad.append(n)
    if bad:
        raise DatasetError(
            f"unknown attribute(s) {', '.join(map(repr, bad))} for dataset {dataset!r} "
            f"(known: {', '.join(known)})"
        )
    return out

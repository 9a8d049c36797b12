"""Dataset interface: attribute names known offline, splits of uint8 images + {0,1} labels.

Every dataset module exposes ``ATTRIBUTES`` (names in the dataset's official order, so planning
works without the data), ``MEAN``/``STD`` (input normalisation) and
``load(cfg: DatasetConfig, store=None) -> LoadedDataset`` (``store``: where a prepared pack may
live, see ``aal_k8s.data.pack``). A split holds either decoded uint8 images (synthetic data, packs)
or image files decoded on the fly (an unpacked dataset folder, see ``aal_k8s.data.pipeline``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from aal_k8s.config import DATASET_PRESETS
from aal_k8s.errors import DatasetError

#: name -> module. The names are the config's (it validates ``dataset.name`` and holds each
#: dataset's preset without importing torch); dataset ``x`` is the module ``aal_k8s.data.x``.
DATASETS = {name: f"aal_k8s.data.{name}" for name in DATASET_PRESETS}


@dataclass
class Split:
    images: torch.Tensor | None  # uint8 [N, 3, H, W]; None when the split is a list of files
    labels: torch.Tensor  # float32 [N, M] in {0, 1}
    files: list[str] | None = None  # unpacked data: image paths, decoded to ``size`` when read
    size: tuple[int, int] | None = None  # (height, width) every image of the split has once decoded

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class LoadedDataset:
    name: str
    attributes: list[str]
    splits: dict[str, Split]  # "train", "val", "test"
    mean: tuple[float, float, float]  # per-channel normalisation on [0, 1] pixels
    std: tuple[float, float, float]
    transform: bool = True  # train batches may be cropped/flipped/resized (False: fed as they are)
    source: str = ""  # where the images came from, for logs (a pack, a folder, "generated")


def dataset_module(name: str):
    """The module of dataset ``name``; a one-line DatasetError naming it when unknown."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    return importlib.import_module(DATASETS[name])


def attribute_names(name: str) -> list[str]:
    """The dataset's attribute names in official order, without touching the data."""
    return list(dataset_module(name).ATTRIBUTES)


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of [0, 1] pixels that the dataset's models are trained with."""
    mod = dataset_module(name)
    return tuple(mod.MEAN), tuple(mod.STD)


def decode_size(name: str) -> tuple[int, int] | None:
    """(height, width) that decoding resizes every image of dataset ``name`` to before the model's
    own resize (``RESIZE`` datasets, e.g. Duke), or None when images are used at their size."""
    mod = dataset_module(name)
    return tuple(mod.IMAGE_SIZE) if getattr(mod, "RESIZE", False) else None


def load_dataset(cfg, store=None) -> LoadedDataset:
    """Load (or generate) all splits of ``cfg.name`` (a ``DatasetConfig``); ``store`` is the run's
    store, searched for a prepared pack (``packs/<name>/``) when ``cfg.pack`` is ``auto``."""
    return dataset_module(cfg.name).load(cfg, store=store)


def resolve_attributes(dataset: str, names: list[str]) -> list[str]:
    """Validate user-given attribute names (or 1-based indices) against the dataset; all errors at once."""
    known = attribute_names(dataset)
    out, bad = [], []
    for n in names:
        if n.isdigit() and 1 <= int(n) <= len(known):
            out.append(known[int(n) - 1])
        elif n in known:
            out.append(n)
        elif n.replace(" ", "_") in known:  # Duke names as printed in the paper ("Carrying backpack")
            out.append(n.replace(" ", "_"))
        else:
            bad.append(n)
    if bad:
        raise DatasetError(
            f"unknown attribute(s) {', '.join(map(repr, bad))} for dataset {dataset!r} "
            f"(known: {', '.join(known)})"
        )
    return out

"""Where a real dataset's images come from: a verified pack (in the store, or at ``dataset.pack``)
or the official folder (``dataset.root``). The orchestration above the leaf helpers of
``aal_k8s.data.common`` (decoding, checks) and ``aal_k8s.data.pack`` (the pack format), so neither
of those imports the other's callers.

A dataset module provides ``NAME``, ``ATTRIBUTES``, ``MEAN``/``STD``, ``IMAGE_SIZE`` (the (height,
width) every image has once decoded, which is also the pack's resolution), ``RESIZE`` (whether
decoding resizes to ``IMAGE_SIZE``, or a different size is an error), ``LAYOUT`` (one line
describing the expected folder, for messages), ``read_source(root, strict) -> {split: Part}`` (the
official splits, as packed) and ``final_splits(cfg, parts) -> {"train", "val", "test": Split}``.
"""

from __future__ import annotations

import os

from aal_k8s.data import LoadedDataset, dataset_module
from aal_k8s.data import pack as packs
from aal_k8s.errors import DatasetError


def source_root(cfg, mod) -> str:
    """``dataset.root`` checked to be an existing folder, else a one-line error naming it."""
    if not cfg.root:
        raise DatasetError(
            f"dataset {mod.NAME!r}: dataset.root is not set and no prepared pack was found; "
            f"set dataset.root to {mod.LAYOUT}, or run `aal-k8s prepare --dataset {mod.NAME}`"
        )
    root = os.path.expanduser(cfg.root)
    if not os.path.isdir(root):
        raise DatasetError(f"dataset.root {root!r} does not exist or is not a folder (expected {mod.LAYOUT})")
    return root


def load_real(cfg, store, mod) -> LoadedDataset:
    """Every split of a real dataset: from a verified pack when one is configured or found, else
    from the official folder (images decoded on the fly by the input pipeline)."""
    local = packs.find_pack(cfg, store)
    if local is not None:
        if local.manifest["dataset"] != mod.NAME:
            raise DatasetError(f"{local.where}: pack holds dataset {local.manifest['dataset']!r}, not {mod.NAME!r}")
        if local.manifest["attributes"] != list(mod.ATTRIBUTES):
            raise DatasetError(f"{local.where}: pack attributes differ from the {mod.NAME} attribute list")
        parts = local.parts()
        source = f"pack {local.where}"
    else:
        root = source_root(cfg, mod)
        parts = mod.read_source(root, cfg.strict_counts)
        source = f"folder {root}"
    return LoadedDataset(
        name=mod.NAME,
        attributes=list(mod.ATTRIBUTES),
        splits=mod.final_splits(cfg, parts),
        mean=tuple(mod.MEAN),
        std=tuple(mod.STD),
        transform=True,
        source=source,
    )


def check_source(cfg, store, local: bool) -> None:
    """Before submitting runs: fail now, with one line, if no run could find the data.

    ``cfg`` is a DatasetConfig and ``store`` the experiment's store. A pack (in the store, or at
    ``dataset.pack``) is enough once its manifest verifies (one small read: an unsealed or altered
    manifest would otherwise fail every run's worker); otherwise ``dataset.root`` must be set and,
    when the runs execute on this machine (``local``), exist and hold the dataset's layout: its
    label files are parsed and its image files listed (not decoded), so an empty or malformed root
    is one line here, not one failure per run. On Kubernetes the root is a path inside the pods, unchecked.
    """
    if cfg.name == "synthetic":
        return
    mod = dataset_module(cfg.name)
    if cfg.pack not in ("auto", "none"):
        from aal_k8s.store import open_store

        src = open_store(cfg.pack)
        if not src.exists(packs.MANIFEST):
            raise DatasetError(f"dataset.pack {cfg.pack!r}: no pack there ({src.url(packs.MANIFEST)} does not exist)")
        packs.parse_manifest(src.get_bytes(packs.MANIFEST), src.url(packs.MANIFEST))
        return
    key = f"{packs.pack_prefix(cfg.name)}/{packs.MANIFEST}"
    if cfg.pack == "auto" and store is not None and store.exists(key):
        packs.parse_manifest(store.get_bytes(key), store.url(key))
        return
    if local or not cfg.root:
        root = source_root(cfg, mod)
        mod.final_splits(cfg, mod.read_source(root, cfg.strict_counts))

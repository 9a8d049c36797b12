"""Decode a real dataset once into a pack (uint8 shards, labels, splits, manifest with sha256) and
put it in the store under ``packs/<dataset>/``, where workers find it (``dataset.pack=auto``).

The source folder must have the dataset's official layout (docs/datasets.md). With a local store
the pack is written straight into it; with an S3 store it is built in ``--output`` (default: the
cache folder) and then uploaded, manifest last.
"""

from __future__ import annotations

import os
import sys

from aal_k8s.cli.common import add_config_args, config_from_args, examples
from aal_k8s.errors import AALError

HELP = "decode a dataset once into a pack and upload it to the store"
EXAMPLES = examples(
    "aal-k8s prepare --dataset celeba --source /data/celeba",
    "aal-k8s prepare --dataset duke --source /data/DukeMTMC-reID --store s3://bucket/aal",
)


def add_arguments(p) -> None:
    p.add_argument("--source", required=True, metavar="DIR", help="the dataset folder in its official layout")
    p.add_argument("--output", metavar="DIR", help="local folder the pack is built in before an upload")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N", help="decode processes")
    p.add_argument("--shard-size", type=int, default=None, metavar="N", help="images per shard file")
    add_config_args(p)


def run(args) -> int:
    from aal_k8s.data import dataset_module
    from aal_k8s.data.pack import DEFAULT_SHARD_SIZE, build_pack, cache_root, copy_pack, pack_prefix
    from aal_k8s.store import LocalStore, open_store

    cfg = config_from_args(args)
    name = cfg.dataset.name
    if name == "synthetic":
        raise AALError("prepare: choose a real dataset with --dataset celeba or --dataset duke (synthetic is generated)")
    shard = args.shard_size or DEFAULT_SHARD_SIZE
    if shard < 1 or args.workers < 0:
        raise AALError("prepare: --shard-size must be >= 1 and --workers >= 0")
    mod = dataset_module(name)
    target = open_store(cfg.store.uri, cfg.store)  # not the environment's defaults: --set store.* applies
    prefix = pack_prefix(name)
    if isinstance(target, LocalStore) and not args.output:
        build_store = target
    else:
        build_store = LocalStore(args.output or os.path.join(cache_root(cfg.dataset), "prepared"))
    manifest = build_pack(
        mod, os.path.expanduser(args.source), build_store, prefix,
        strict=cfg.dataset.strict_counts, shard_size=shard, workers=args.workers,
    )  # fmt: skip
    if build_store is not target and not (isinstance(target, LocalStore) and target.root == build_store.root):
        copy_pack(build_store, prefix, target, prefix)
    counts = ", ".join(f"{s} {e['count']:,}" for s, e in manifest["splits"].items())
    img = manifest["image"]
    print(f"pack {name}: {counts} images at {img['height']}x{img['width']} -> {target.url(prefix)}/", file=sys.stderr)
    print(target.url(f"{prefix}/manifest.json"))
    return 0

"""Find (and with ``--delete`` remove) what an experiment keeps that nothing will read again.

* checkpoints of every attempt of a committed run, and a losing attempt's weights (left when a
  worker died between the commit record and its cleanup);
* temp files (``.part-*``) of interrupted writes older than 15 minutes (younger ones may be writes
  in progress);
* final model files that ``final/manifest.json`` no longer names (an interrupted publication).

Runs without a commit record are left alone: their files may belong to a worker still running.
Quarantined commit records (``runs/<id>/quarantine/``) are kept as evidence. A dry run by default.
"""

from __future__ import annotations

from aal_k8s.cli.common import add_config_args, config_from_args, examples, experiment_store

HELP = "show (and with --delete remove) leftovers of crashed workers and publications"
EXAMPLES = examples("aal-k8s gc --dataset celeba --store s3://bucket/aal", "aal-k8s gc --dataset celeba --delete")


def add_arguments(p) -> None:
    p.add_argument("--delete", action="store_true", help="remove what is found (default: only list it)")
    add_config_args(p)


def find_garbage(exp) -> dict[str, dict[str, int]]:
    """``{category: {key: size}}`` of everything ``gc`` would remove."""
    from aal_k8s.errors import StoreError
    from aal_k8s.modelset import MANIFEST, MANIFEST_SHA, MODELS
    from aal_k8s.store.layout import TEMP_MAX_AGE

    runs_root = exp.key("runs") + "/"
    run_ids = sorted({k[len(runs_root) :].split("/", 1)[0] for k in exp.store.list(exp.key("runs"))})
    out: dict[str, dict[str, int]] = {"committed runs' checkpoints and losing attempts": {}, "temp files": {}}
    for run_id in run_ids:
        if exp.is_committed(run_id):
            for key, size in exp.leftovers(run_id).items():
                cat = "temp files" if key.rsplit("/", 1)[-1].startswith(".part-") else next(iter(out))
                out[cat][key] = size
    out["temp files"].update({k: n for k, n in exp.store.temp_files(exp.experiment, TEMP_MAX_AGE).items()
                              if not k.startswith(runs_root)})  # fmt: skip  (committed runs: above)
    try:
        manifest = exp.get_sealed("final", MANIFEST, field=MANIFEST_SHA, what="final model set manifest")
    except StoreError:
        manifest = None  # unreadable: which files it names is unknown, so none is garbage
    if manifest is not None:
        named = {exp.key("final", m.get("file", "")) for m in manifest.get("models", []) if isinstance(m, dict)}
        sizes = exp.store.list_sizes(exp.key("final", MODELS))
        out["unpublished final model files"] = {k: n for k, n in sizes.items() if k not in named}
    return {cat: found for cat, found in out.items() if found}


def run(args) -> int:
    cfg = config_from_args(args)
    exp = experiment_store(cfg)
    garbage = find_garbage(exp)
    total = sum(sum(found.values()) for found in garbage.values())
    for cat, found in garbage.items():
        print(f"{cat}: {len(found)} files, {_size(sum(found.values()))}")
        for key, size in found.items():
            print(f"  {exp.store.url(key)}  {_size(size)}")
            if args.delete:
                exp.store.delete(key)
    files = sum(len(f) for f in garbage.values())
    if not garbage:
        print(f"experiment {exp.experiment} in {exp.store.uri}: nothing to collect")
    elif args.delete:
        print(f"deleted {files} files, {_size(total)}")
    else:
        print(f"{files} files, {_size(total)} could be deleted: run again with --delete (dry run, nothing deleted)")
    return 0


def _size(n: float) -> str:
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")

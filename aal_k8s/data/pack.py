"""Packs: a real dataset decoded once into uint8 shards, with labels, splits and a manifest.

Layout below the pack's prefix (``packs/<dataset>/`` at the root of the store, next to the
experiments)::

    manifest.json                 written LAST: a pack exists exactly when its manifest does
    <split>/images-00000.u8       uint8 [n, 3, H, W] (C order, RGB), up to shard_size images
    <split>/images-00001.u8       ...
    <split>/labels.u8             uint8 [N, M] in {0, 1}, the attributes in official order
    <split>/names.txt             the N image paths relative to the dataset root, one per line

The manifest lists every file with its size and sha256, the image resolution (CelebA: native
218x178; Duke: resized to 256x128, see the dataset modules), the attribute names and the counts.
Splits are the official ones (Duke's validation split is carved from ``train`` at load time).
The manifest is sealed (``manifest_sha256``, see ``aal_k8s.checksums``): the file checksums it
lists are only worth what the manifest itself is, so a reader refuses one that is unsealed or
altered, and ``prepare`` writing it again is the only remedy.

Workers fetch a pack once per machine into ``<cache>/packs/<dataset>/<manifest sha256[:16]>/``
(cache = ``dataset.cache_dir``, else ``$AAL_K8S_CACHE``, else ``~/.cache/aal-k8s``): every file is
checked against the manifest's sha256 as it arrives, each split's shards are joined into one
``<split>.images.u8`` that is memory-mapped, and a ``complete.json`` marker is written last. A
later run on the same machine finds the marker and checks only the file sizes. Concurrent runs on
one machine take a file lock, so one downloads and the others wait.

Or they stream it into memory (``dataset.pack_to: memory``, the default of a Kubernetes pod without
a cache volume): every file is fetched by the same threads, checked against its sha256 and copied
into one uint8 array per split; nothing touches disk. A pod then needs no pack-sized emptyDir and
no hostPath (which the restricted Pod Security profile forbids); its memory request and limit grow
by the pack instead (aal_k8s.backends.k8s_manifests), and a container whose memory limit is below
the pack is refused before anything is fetched. The training pipeline holds every split in memory
either way (the page cache of the memory-mapped file, or in GPU memory when it fits).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from aal_k8s.checksums import check_bytes, seal, sha256_hex, unseal
from aal_k8s.config import PACK_TO_ENV
from aal_k8s.data import DATASETS
from aal_k8s.data.common import Part, decoded_batches, decoder_name
from aal_k8s.errors import DatasetError

FORMAT = "aal-k8s-pack/1"
PACKS_PREFIX = "packs"
MANIFEST = "manifest.json"
MANIFEST_SHA = "manifest_sha256"  # the manifest's checksum of itself (aal_k8s.checksums.seal)
COMPLETE = "complete.json"
DEFAULT_SHARD_SIZE = 1024  # images per shard: about 119 MB for CelebA, 101 MB for Duke
DOWNLOAD_THREADS = 8
#: The memory limit of this container (cgroup v2); "max" or absent = none.
CGROUP_MEMORY_MAX = "/sys/fs/cgroup/memory.max"


def pack_prefix(dataset: str) -> str:
    """Where ``aal-k8s prepare`` puts a dataset's pack in a store."""
    return f"{PACKS_PREFIX}/{dataset}"


def _join(prefix: str, key: str) -> str:
    return f"{prefix.rstrip('/')}/{key}" if prefix else key


def cache_root(cfg=None) -> str:
    d = (getattr(cfg, "cache_dir", "") or "").strip()
    return os.path.abspath(os.path.expanduser(d or os.environ.get("AAL_K8S_CACHE") or "~/.cache/aal-k8s"))


# -- building ----------------------------------------------------------------------------------------
def build_pack(
    mod,
    source: str,
    store,
    prefix: str,
    strict: bool = True,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 4,
    log=None,
) -> dict:
    """Decode every image of the dataset folder ``source`` once and write the pack to ``store``
    under ``prefix`` (manifest last). Returns the manifest."""
    log = log if log is not None else sys.stderr  # per call: a captured stream may be gone
    if not os.path.isdir(source):
        raise DatasetError(f"{source}: source folder does not exist (expected {mod.LAYOUT})")
    parts = mod.read_source(source, strict)
    h, w = mod.IMAGE_SIZE
    written: list[str] = []

    def put(key: str, data: bytes) -> None:
        written.append(_join(prefix, key))
        store.put_bytes(written[-1], data)

    # A pack already here is replaced file by file: its manifest goes first, so that it is never
    # found half-overwritten. A bad image (or an interrupt) removes what this build wrote and what
    # is left of the replaced pack: no partial shards stay behind (prepare again once fixed).
    old = _old_files(store, prefix)
    store.delete(_join(prefix, MANIFEST))
    try:
        splits = _write_splits(mod, source, parts, shard_size, workers, put, log)
    except BaseException:
        for key in dict.fromkeys([*written, *old]):
            try:
                store.delete(key)
            except Exception:  # the store may be what failed; the original error matters more
                pass
        raise
    manifest = seal({
        "format": FORMAT,
        "dataset": mod.NAME,
        "attributes": list(mod.ATTRIBUTES),
        "image": {
            "height": h, "width": w, "channels": 3, "dtype": "uint8", "layout": "NCHW",
            "resized": bool(mod.RESIZE),
        },  # fmt: skip
        "splits": splits,
        "source": {"root": os.path.abspath(source), "strict_counts": bool(strict)},
        "decoder": decoder_name(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, MANIFEST_SHA)  # fmt: skip
    store.put_bytes(_join(prefix, MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def _old_files(store, prefix: str) -> list[str]:
    """Keys of the files a pack already at ``prefix`` lists (none when there is none or its
    manifest is unreadable)."""
    key = _join(prefix, MANIFEST)
    try:
        if not store.exists(key):
            return []
        return [_join(prefix, f["key"]) for f in pack_files(parse_manifest(store.get_bytes(key), store.url(key)))]
    except DatasetError:
        return []


def _write_splits(mod, source: str, parts, shard_size: int, workers: int, put, log) -> dict:
    """Decode every split into shards and ``put`` them with its labels and names; returns the
    manifest's ``splits``."""
    h, w = mod.IMAGE_SIZE
    splits = {}
    t0, total = time.perf_counter(), 0
    for split, part in parts.items():
        n = len(part)
        files = [os.path.join(source, name) for name in part.names]
        starts = list(range(0, n, shard_size))
        batches = [list(range(s, min(n, s + shard_size))) for s in starts]
        shards = []
        stream = decoded_batches(files, (h, w), mod.RESIZE, _chunks(batches, 64), workers)
        for k, idx in enumerate(batches):
            buf = np.empty((len(idx), 3, h, w), dtype=np.uint8)
            filled = 0
            while filled < len(idx):
                b = next(stream).numpy()
                buf[filled : filled + len(b)] = b
                filled += len(b)
            data = buf.tobytes()
            key = f"{split}/images-{k:05d}.u8"
            put(key, data)
            shards.append({"key": key, "count": len(idx), "size": len(data), "sha256": sha256_hex(data)})
            total += len(idx)
            rate = total / max(1e-9, time.perf_counter() - t0)
            print(f"prepare {mod.NAME}: {split} {idx[-1] + 1:,}/{n:,} images ({rate:.0f} images/s)", file=log)
        labels = np.ascontiguousarray(part.labels, dtype=np.uint8).tobytes()
        names = "".join(f"{x}\n" for x in part.names).encode()
        entry = {"count": n, "images": shards}
        for name, key, data in (("labels", f"{split}/labels.u8", labels), ("names", f"{split}/names.txt", names)):
            put(key, data)
            entry[name] = {"key": key, "size": len(data), "sha256": sha256_hex(data)}
        splits[split] = entry
    return splits


def _chunks(batches: list[list[int]], size: int):
    """Decode batches of at most ``size`` images that never straddle two shards."""
    return [b[i : i + size] for b in batches for i in range(0, len(b), size)]


def pack_files(manifest: dict) -> list[dict]:
    """Every file the manifest lists ({key, size, sha256}), shards first."""
    out = []
    for entry in manifest["splits"].values():
        out += entry["images"] + [entry["labels"], entry["names"]]
    return out


def copy_pack(src, src_prefix: str, dst, dst_prefix: str, log=None) -> None:
    """Upload a built pack from store ``src`` to ``dst`` (files verified first, manifest last)."""
    log = log if log is not None else sys.stderr
    raw = src.get_bytes(_join(src_prefix, MANIFEST))
    manifest = parse_manifest(raw, src.url(_join(src_prefix, MANIFEST)))
    for i, f in enumerate(pack_files(manifest), 1):
        data = src.get_bytes(_join(src_prefix, f["key"]))
        _check(data, f, src.url(_join(src_prefix, f["key"])))
        dst.put_bytes(_join(dst_prefix, f["key"]), data)
        print(f"upload: {i}/{len(pack_files(manifest))} {dst.url(_join(dst_prefix, f['key']))}", file=log)
    dst.put_bytes(_join(dst_prefix, MANIFEST), raw)


# -- reading -----------------------------------------------------------------------------------------
def parse_manifest(raw: bytes, where: str) -> dict:
    try:
        m = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DatasetError(f"{where}: pack manifest is not valid JSON") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        got = m.get("format") if isinstance(m, dict) else None
        raise DatasetError(f"{where}: not a pack manifest of format {FORMAT} (format: {got!r})")
    try:  # after the format check, so that a file that is no pack manifest at all says so
        unseal(raw, MANIFEST_SHA, where, "pack manifest", DatasetError)
    except DatasetError as e:  # no fallback for an unsealed pack: its shard checksums are unverified
        raise DatasetError(f"{e.message}; run `aal-k8s prepare --dataset {_dataset_arg(m.get('dataset'))}` "
                           "again to rebuild the pack") from None  # fmt: skip
    problem = _manifest_problem(m)
    if problem:
        raise DatasetError(f"{where}: pack manifest is incomplete or inconsistent ({problem})")
    return m


def _dataset_arg(name) -> str:
    """The manifest's dataset name for the remedy, if it is one we know (the manifest is not
    trusted yet: never echo its text into a suggested command line)."""
    return name if isinstance(name, str) and name in DATASETS else "<dataset>"


def _manifest_problem(m: dict) -> str | None:
    """What is wrong with a parsed manifest of the right format (None: nothing). Explicit checks,
    not asserts: under ``python -O`` an assert is skipped and a malformed manifest would pass."""

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    img = m.get("image")
    if not isinstance(img, dict):
        return "image: missing"
    for k, want in (("channels", 3), ("dtype", "uint8"), ("layout", "NCHW")):
        if img.get(k) != want:
            return f"image.{k}: expected {want!r}, got {img.get(k)!r}"
    for k in ("height", "width"):
        if not is_int(img.get(k)) or img[k] <= 0:
            return f"image.{k}: expected a positive integer, got {img.get(k)!r}"
    if not isinstance(m.get("attributes"), list) or not isinstance(m.get("dataset"), str):
        return "attributes (a list) or dataset (a string) missing"
    splits = m.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "splits: missing"
    for split, entry in splits.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or not is_int(entry.get("count")):
            return f"splits.{split}: needs count and images"
        if any(not isinstance(s, dict) or not is_int(s.get("count")) for s in entry["images"]):
            return f"splits.{split}.images: every shard needs a count"
        if sum(s["count"] for s in entry["images"]) != entry["count"]:
            return f"splits.{split}: shard counts do not add up to count {entry['count']}"
        for name in ("labels", "names"):
            if not isinstance(entry.get(name), dict):
                return f"splits.{split}.{name}: missing"
        for f in entry["images"] + [entry["labels"], entry["names"]]:
            if not isinstance(f.get("key"), str) or not is_int(f.get("size")) or f["size"] < 0:
                return f"splits.{split}: a file without key or size"
            if not isinstance(f.get("sha256"), str) or len(f["sha256"]) != 64:
                return f"splits.{split}: {f['key']} has no sha256"
    return None


def _check(data: bytes, f: dict, where: str) -> None:
    check_bytes(where, data, f["sha256"], f["size"], DatasetError)


@dataclass
class LocalPack:
    """A verified pack on local disk."""

    folder: str
    manifest: dict
    where: str  # the pack's URI, for messages

    def _file(self, split: str, what: str) -> str:
        return os.path.join(self.folder, f"{split}.{what}")

    def expected_sizes(self) -> dict[str, int]:
        out = {}
        for split, e in self.manifest["splits"].items():
            out[self._file(split, "images.u8")] = sum(s["size"] for s in e["images"])
            out[self._file(split, "labels.u8")] = e["labels"]["size"]
            out[self._file(split, "names.txt")] = e["names"]["size"]
        return out

    def intact(self) -> bool:
        if not os.path.isfile(os.path.join(self.folder, COMPLETE)):
            return False
        return all(os.path.isfile(p) and os.path.getsize(p) == n for p, n in self.expected_sizes().items())

    def parts(self) -> dict:
        """{split: Part} with the images memory-mapped (copy-on-write, never written)."""
        h, w = _image_size(self.manifest)
        out = {}
        for split, e in self.manifest["splits"].items():
            n = int(e["count"])
            images = np.memmap(self._file(split, "images.u8"), dtype=np.uint8, mode="c", shape=(n, 3, h, w))
            labels = np.fromfile(self._file(split, "labels.u8"), dtype=np.uint8)
            with open(self._file(split, "names.txt"), encoding="utf-8") as f:
                names = f.read()
            out[split] = _part(self.manifest, split, images, labels, names, self._file(split, "names.txt"))
        return out


@dataclass
class MemoryPack:
    """A verified pack streamed into memory (``stream``): the same ``manifest``, ``where`` and
    ``parts()`` as a LocalPack."""

    manifest: dict
    where: str  # the pack's URI, for messages
    splits: dict  # {split: Part}

    def parts(self) -> dict:
        return self.splits


def _image_size(manifest: dict) -> tuple[int, int]:
    img = manifest["image"]
    return int(img["height"]), int(img["width"])


def _part(manifest: dict, split: str, images: np.ndarray, labels: np.ndarray, names: str, where: str):
    """One split's Part from its verified files (images already [n, 3, H, W])."""
    n, m = int(manifest["splits"][split]["count"]), len(manifest["attributes"])
    lines = names.splitlines()
    if len(lines) != n:
        raise DatasetError(f"{where}: {len(lines)} names for {n} images")
    if labels.size != n * m:
        raise DatasetError(f"{where}: split {split}: {labels.size} labels for {n} images x {m} attributes")
    return Part(names=lines, labels=labels.reshape(n, m), images=torch.from_numpy(images))


def find_pack(cfg, store) -> LocalPack | None:
    """The pack ``cfg`` (a DatasetConfig) asks for, fetched and verified; None to read the folder.

    ``dataset.pack``: ``none`` -> None; ``auto`` -> ``packs/<name>/`` of ``store`` if its manifest
    exists, else None; anything else is a folder or store URI whose top holds the manifest.
    """
    mode = cfg.pack
    if mode == "none":
        return None
    if mode == "auto":
        if store is None:
            return None
        src, prefix = store, pack_prefix(cfg.name)
        if not src.exists(_join(prefix, MANIFEST)):
            return None
    else:
        from aal_k8s.store import open_store

        src, prefix = open_store(mode), ""
        if not src.exists(MANIFEST):
            raise DatasetError(f"dataset.pack {mode!r}: no pack there ({src.url(MANIFEST)} does not exist)")
    if pack_destination(cfg) == "memory":
        return stream(src, prefix)
    return fetch(src, prefix, cache_root(cfg))


def pack_destination(cfg) -> str:
    """``dataset.pack_to`` (a DatasetConfig), with auto resolved: ``$AAL_K8S_PACK_TO`` where the
    Kubernetes backend set it for the pod, else disk."""
    mode = getattr(cfg, "pack_to", "auto")
    if mode != "auto":
        return mode
    env = os.environ.get(PACK_TO_ENV, "")
    if env and env not in ("disk", "memory"):
        raise DatasetError(f"${PACK_TO_ENV}={env!r}: expected disk or memory")
    return env or "disk"


def _get_verified(src, prefix: str, f: dict) -> bytes:
    key = _join(prefix, f["key"])
    data = src.get_bytes(key)
    _check(data, f, src.url(key))
    return data


def memory_limit() -> int | None:
    """This container's memory limit in bytes (cgroup v2), None when there is none or no cgroup."""
    try:
        with open(CGROUP_MEMORY_MAX) as f:
            value = f.read().strip()
    except OSError:
        return None
    return int(value) if value.isdigit() else None


def stream(src, prefix: str, threads: int = DOWNLOAD_THREADS) -> MemoryPack:
    """Fetch and verify the pack at ``prefix`` of store ``src`` straight into memory: one uint8
    array per split, each shard checked against the manifest's sha256 as it arrives."""
    where = src.url(prefix) if prefix else src.url("").rstrip("/")
    raw = src.get_bytes(_join(prefix, MANIFEST))
    manifest = parse_manifest(raw, src.url(_join(prefix, MANIFEST)))
    total = sum(f["size"] for f in pack_files(manifest))
    limit = memory_limit()
    if limit is not None and total > limit:
        raise DatasetError(
            f"{where}: the pack ({total / 1e9:.1f} GB) does not fit in this container's memory limit "
            f"({limit / 1e9:.1f} GB): raise k8s.memory_limit, or mount a pack cache (k8s.cache_volume_claim) "
            "so the pack is read from disk"
        )
    h, w = _image_size(manifest)
    images, small, jobs = {}, {}, []
    for split, e in manifest["splits"].items():
        n = int(e["count"])
        images[split] = flat = np.empty(n * 3 * h * w, dtype=np.uint8)
        if sum(s["size"] for s in e["images"]) != flat.size:
            raise DatasetError(f"{where}: split {split}: its shards do not hold {n} images of 3x{h}x{w} bytes")
        offset = 0
        for s in e["images"]:
            jobs.append((s, flat, offset))
            offset += s["size"]
        jobs += [(e["labels"], None, 0), (e["names"], None, 0)]

    def one(job) -> None:
        f, flat, offset = job
        data = _get_verified(src, prefix, f)
        if flat is None:
            small[f["key"]] = data
        else:  # into place: a shard's bytes are held once, while they are copied
            flat[offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(one, jobs))
    splits = {}
    for split, e in manifest["splits"].items():
        labels = np.frombuffer(bytearray(small[e["labels"]["key"]]), dtype=np.uint8)  # writable, as torch wants
        names = small[e["names"]["key"]].decode("utf-8")
        splits[split] = _part(manifest, split, images[split].reshape(-1, 3, h, w), labels, names,
                              src.url(_join(prefix, e["names"]["key"])))  # fmt: skip
    return MemoryPack(manifest, where, splits)


def fetch(src, prefix: str, cache: str, threads: int = DOWNLOAD_THREADS) -> LocalPack:
    """Download (once per machine) and verify the pack at ``prefix`` of store ``src``."""
    where = src.url(prefix) if prefix else src.url("").rstrip("/")
    raw = src.get_bytes(_join(prefix, MANIFEST))
    manifest = parse_manifest(raw, src.url(_join(prefix, MANIFEST)))
    folder = os.path.join(cache, PACKS_PREFIX, manifest["dataset"], sha256_hex(raw)[:16])
    local = LocalPack(folder, manifest, where)
    os.makedirs(folder, exist_ok=True)
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per machine; the others wait for it
        if local.intact():
            return local
        marker = os.path.join(folder, COMPLETE)
        if os.path.exists(marker):
            os.unlink(marker)
        t0 = time.perf_counter()
        jobs = []
        for split, e in manifest["splits"].items():
            path = local._file(split, "images.u8")
            with open(path, "wb") as f:
                f.truncate(sum(s["size"] for s in e["images"]))
            offset = 0
            for s in e["images"]:
                jobs.append((s, path, offset))
                offset += s["size"]
            jobs.append((e["labels"], local._file(split, "labels.u8"), None))
            jobs.append((e["names"], local._file(split, "names.txt"), None))

        def one(job):
            f, path, offset = job
            data = _get_verified(src, prefix, f)
            if offset is None:
                with open(path, "wb") as out:
                    out.write(data)
            else:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, data, offset)
                finally:
                    os.close(fd)
            return len(data)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            total = sum(pool.map(one, jobs))
        with open(os.path.join(folder, MANIFEST), "wb") as f:
            f.write(raw)
        with open(marker, "w") as f:
            json.dump({"source": where, "bytes": total, "seconds": round(time.perf_counter() - t0, 1)}, f)
        return local

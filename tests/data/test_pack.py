"""Packs: round trip (identical pixels and labels), manifest, checksums, the local cache, prepare."""

import json
import os

import numpy as np
import pytest
import torch
from realdata_fixtures import make_celeba, make_duke
from s3_testing import (  # noqa: F401
    bucket, free_port, moto_endpoint, raw_s3, s3_env, s3_server, s3_uri, seaweed_endpoint,
)

from aal_k8s.cli import main
from aal_k8s.config import load_config
from aal_k8s.data import celeba, duke, load_dataset
from aal_k8s.data.common import decode_image
from aal_k8s.checksums import seal
from aal_k8s.data.pack import FORMAT, MANIFEST_SHA, build_pack, fetch, pack_prefix
from aal_k8s.errors import DatasetError
from aal_k8s.store import LocalStore


class CountingStore(LocalStore):
    def __init__(self, root):
        super().__init__(root)
        self.reads = 0

    def get_bytes(self, key):
        self.reads += 1
        return super().get_bytes(key)


def _cfg(name, root, tmp_path, *more):
    over = [f"dataset.root={root}", "dataset.strict_counts=false", f"dataset.cache_dir={tmp_path / 'cache'}", *more]
    return load_config(dataset=name, overrides=over).dataset


@pytest.fixture
def celeba_tree(tmp_path):
    root = tmp_path / "celeba"
    make_celeba(root)
    return root


def _build(mod, root, store, shard_size=2):
    return build_pack(mod, str(root), store, pack_prefix(mod.NAME), strict=False, shard_size=shard_size, workers=0)


def test_celeba_pack_round_trip_is_pixel_identical(celeba_tree, tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    manifest = _build(celeba, celeba_tree, store)
    assert manifest["format"] == FORMAT and manifest["image"]["height"] == 218 and manifest["image"]["width"] == 178
    assert {s: e["count"] for s, e in manifest["splits"].items()} == {"train": 5, "val": 2, "test": 3}
    assert len(manifest["splits"]["train"]["images"]) == 3  # shards of 2, 2, 1
    assert store.list("packs/celeba")[-1] == "packs/celeba/val/names.txt"

    raw = load_dataset(_cfg("celeba", celeba_tree, tmp_path, "dataset.pack=none"))
    packed = load_dataset(_cfg("celeba", celeba_tree, tmp_path), store=store)
    assert packed.source.startswith("pack ") and raw.source.startswith("folder ")
    for split in ("train", "val", "test"):
        p, r = packed.splits[split], raw.splits[split]
        assert p.images.dtype == torch.uint8 and p.images.shape == (len(r), 3, 218, 178)
        assert torch.equal(p.labels, r.labels)
        for i, f in enumerate(r.files):  # bytes identical to decoding the JPEG
            assert torch.equal(p.images[i], decode_image(f, (218, 178), resize=False)), f


def test_duke_pack_round_trip_keeps_the_identity_split(tmp_path):
    root = tmp_path / "duke"
    make_duke(root)
    store = LocalStore(str(tmp_path / "store"))
    manifest = _build(duke, root, store)
    assert set(manifest["splits"]) == {"train", "test"} and manifest["image"]["resized"] is True
    raw = load_dataset(_cfg("duke", root, tmp_path, "dataset.pack=none", "dataset.val_fraction=0.34"))
    packed = load_dataset(_cfg("duke", root, tmp_path, "dataset.val_fraction=0.34"), store=store)
    for split in ("train", "val", "test"):
        p, r = packed.splits[split], raw.splits[split]
        assert len(p) == len(r) > 0 and torch.equal(p.labels, r.labels)
        for i, f in enumerate(r.files):
            assert torch.equal(p.images[i], decode_image(f, (256, 128), resize=True)), f


def test_pack_is_fetched_once_then_served_from_the_cache(celeba_tree, tmp_path):
    store = CountingStore(str(tmp_path / "store"))
    manifest = _build(celeba, celeba_tree, store)
    n_files = sum(len(e["images"]) + 2 for e in manifest["splits"].values())
    store.reads = 0
    cache = str(tmp_path / "cache")
    first = fetch(store, "packs/celeba", cache)
    assert store.reads == 1 + n_files  # the manifest, then every file once
    second = fetch(store, "packs/celeba", cache)
    assert store.reads == 1 + n_files + 1  # only the manifest again
    assert first.folder == second.folder and os.path.isfile(os.path.join(first.folder, "complete.json"))
    assert os.path.getsize(os.path.join(first.folder, "train.images.u8")) == 5 * 3 * 218 * 178


def test_corrupt_shard_fails_its_checksum_and_is_not_cached(celeba_tree, tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    _build(celeba, celeba_tree, store)
    key = "packs/celeba/train/images-00001.u8"
    data = bytearray(store.get_bytes(key))
    data[100] ^= 0xFF
    store.put_bytes(key, bytes(data))
    with pytest.raises(DatasetError) as e:
        load_dataset(_cfg("celeba", celeba_tree, tmp_path), store=store)
    assert "images-00001.u8: checksum mismatch" in e.value.message and "\n" not in e.value.message
    folders = [d for d in (tmp_path / "cache" / "packs" / "celeba").iterdir() if d.is_dir()]
    assert not any((d / "complete.json").exists() for d in folders)


def test_damaged_cache_is_fetched_again(celeba_tree, tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    _build(celeba, celeba_tree, store)
    local = fetch(store, "packs/celeba", str(tmp_path / "cache"))
    path = os.path.join(local.folder, "test.images.u8")
    with open(path, "r+b") as f:
        f.truncate(10)
    again = fetch(store, "packs/celeba", str(tmp_path / "cache"))
    assert again.intact() and os.path.getsize(path) == 3 * 3 * 218 * 178


def test_explicit_pack_location_and_bad_manifests(celeba_tree, tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    _build(celeba, celeba_tree, store)
    where = str(tmp_path / "store" / "packs" / "celeba")
    data = load_dataset(_cfg("celeba", tmp_path / "gone", tmp_path, f"dataset.pack={where}"))
    assert len(data.splits["train"]) == 5  # the root is not needed with a pack
    with pytest.raises(DatasetError, match=r"dataset.pack '.*nowhere': no pack there"):
        load_dataset(_cfg("celeba", celeba_tree, tmp_path, f"dataset.pack={tmp_path / 'nowhere'}"))
    with pytest.raises(DatasetError, match="pack holds dataset 'celeba', not 'duke'"):
        load_dataset(_cfg("duke", celeba_tree, tmp_path, f"dataset.pack={where}"))
    (tmp_path / "store" / "packs" / "celeba" / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="manifest.json: pack manifest is not valid JSON"):
        load_dataset(_cfg("celeba", celeba_tree, tmp_path), store=store)
    (tmp_path / "store" / "packs" / "celeba" / "manifest.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(DatasetError, match="not a pack manifest"):
        load_dataset(_cfg("celeba", celeba_tree, tmp_path), store=store)


def _spoil(manifest: dict, how: str) -> dict:
    m = json.loads(json.dumps(manifest))
    if how == "channels":
        m["image"]["channels"] = 4
    elif how == "height":
        m["image"]["height"] = 0
    elif how == "counts":
        m["splits"]["train"]["count"] += 1
    elif how == "sha256":
        del m["splits"]["val"]["labels"]["sha256"]
    return seal(m, MANIFEST_SHA)  # re-sealed: the check under test is the structure, not the checksum


SPOILED = {"channels": "image.channels: expected 3, got 4", "height": "image.height: expected a positive integer",
           "counts": "splits.train: shard counts do not add up", "sha256": "splits.val: val/labels.u8 has no sha256"}


@pytest.mark.parametrize("how", SPOILED)
def test_a_malformed_pack_manifest_is_refused_naming_the_field(celeba_tree, tmp_path, how):
    from aal_k8s.data.pack import parse_manifest

    good = _build(celeba, celeba_tree, LocalStore(str(tmp_path / "store")))
    with pytest.raises(DatasetError, match=f"m.json: pack manifest is incomplete or inconsistent \\({SPOILED[how]}"):
        parse_manifest(json.dumps(_spoil(good, how)).encode(), "m.json")


def test_a_malformed_pack_manifest_is_refused_under_python_optimise(celeba_tree, tmp_path):
    import subprocess
    import sys

    good = _build(celeba, celeba_tree, LocalStore(str(tmp_path / "store")))
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_spoil(good, "channels")))
    code = ("import sys; from aal_k8s.data.pack import parse_manifest; from aal_k8s.errors import DatasetError\n"
            "try: parse_manifest(open(sys.argv[1], 'rb').read(), 'm.json')\n"
            "except DatasetError as e: print(e.message); sys.exit(3)")  # fmt: skip
    res = subprocess.run([sys.executable, "-O", "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 3 and SPOILED["channels"] in res.stdout, res.stdout + res.stderr


def _manifest_file(tmp_path):
    return tmp_path / "store" / "packs" / "celeba" / "manifest.json"


def test_a_freshly_prepared_pack_manifest_is_sealed_and_loads(celeba_tree, tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    _build(celeba, celeba_tree, store)
    written = json.loads(_manifest_file(tmp_path).read_text())
    assert written == seal(written, MANIFEST_SHA)  # the seal on disk is the manifest's own sha256
    assert len(load_dataset(_cfg("celeba", celeba_tree, tmp_path), store=store).splits["train"]) == 5


def test_a_tampered_pack_manifest_is_refused_naming_the_file_and_the_remedy(celeba_tree, tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    _build(celeba, celeba_tree, store)
    m = json.loads(_manifest_file(tmp_path).read_text())
    m["image"]["height"] = 217  # plausible and self-consistent: only the seal can tell
    _manifest_file(tmp_path).write_text(json.dumps(m))
    with pytest.raises(DatasetError) as e:
        load_dataset(_cfg("celeba", celeba_tree, tmp_path), store=store)
    assert e.value.message.startswith(f"{_manifest_file(tmp_path)}: checksum mismatch (the pack manifest was altered")
    assert "run `aal-k8s prepare --dataset celeba` again" in e.value.message and "\n" not in e.value.message
    assert not (tmp_path / "cache" / "packs").exists()  # refused before anything is fetched


def test_an_unsealed_pack_manifest_is_refused_with_no_fallback(celeba_tree, tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    _build(celeba, celeba_tree, store)
    m = json.loads(_manifest_file(tmp_path).read_text())
    del m[MANIFEST_SHA]  # as an older aal-k8s wrote it: otherwise intact
    _manifest_file(tmp_path).write_text(json.dumps(m))
    with pytest.raises(DatasetError) as e:
        load_dataset(_cfg("celeba", celeba_tree, tmp_path), store=store)
    assert e.value.message.startswith(f"{_manifest_file(tmp_path)}: pack manifest has no manifest_sha256")
    assert "run `aal-k8s prepare --dataset celeba` again to rebuild the pack" in e.value.message
    # prepare is the remedy: it replaces the unsealed pack, and the new one loads
    argv = ["prepare", "--dataset", "celeba", "--source", str(celeba_tree), "--store", str(tmp_path / "store"),
            "--workers", "0", "--shard-size", "2", "--set", "dataset.strict_counts=false"]  # fmt: skip
    assert main(argv) == 0
    assert len(load_dataset(_cfg("celeba", celeba_tree, tmp_path), store=store).splits["train"]) == 5


def test_prepare_cli_builds_uploads_and_workers_find_it(celeba_tree, tmp_path, capsys):
    store = tmp_path / "store"
    argv = ["prepare", "--dataset", "celeba", "--source", str(celeba_tree), "--store", str(store), "--workers", "0",
            "--shard-size", "3", "--set", "dataset.strict_counts=false"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(store / "packs" / "celeba" / "manifest.json")
    manifest = json.loads((store / "packs" / "celeba" / "manifest.json").read_text())
    assert [s["count"] for s in manifest["splits"]["train"]["images"]] == [3, 2]
    # an explicit --output is built first, then copied into the store
    out = tmp_path / "build"
    assert main([*argv[:5], "--store", str(tmp_path / "store2"), "--output", str(out), *argv[7:]]) == 0
    assert (out / "packs" / "celeba" / "manifest.json").read_bytes() == (
        tmp_path / "store2" / "packs" / "celeba" / "manifest.json"
    ).read_bytes()


def test_prepare_uploads_through_the_configured_store_endpoint(celeba_tree, s3_uri, s3_env, bucket, raw_s3,
                                                              monkeypatch, tmp_path, capsys):
    # the environment's endpoint is dead: only --set store.endpoint_url reaches the S3 server
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    argv = ["prepare", "--dataset", "celeba", "--source", str(celeba_tree), "--store", s3_uri, "--workers", "0",
            "--output", str(tmp_path / "build"), "--set", "dataset.strict_counts=false",
            "--set", f"store.endpoint_url={s3_env['AWS_ENDPOINT_URL']}", "--set", "store.max_attempts=1"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == f"{s3_uri}/packs/celeba/manifest.json"
    manifest = raw_s3.get_object(Bucket=bucket, Key="aal/packs/celeba/manifest.json")["Body"].read()
    assert manifest == (tmp_path / "build" / "packs" / "celeba" / "manifest.json").read_bytes()


def test_prepare_reports_bad_input_on_one_line(celeba_tree, tmp_path, capsys):
    (celeba_tree / "img_align_celeba" / "000003.jpg").write_bytes(b"\xff\xd8 broken")
    base = ["prepare", "--dataset", "celeba", "--store", str(tmp_path / "s"), "--workers", "0",
            "--set", "dataset.strict_counts=false"]  # fmt: skip
    assert main([*base, "--source", str(celeba_tree)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "000003.jpg: unreadable image" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "s" / "packs" / "celeba" / "manifest.json").exists()
    assert main([*base, "--source", str(tmp_path / "missing")]) == 2
    assert "missing: source folder does not exist" in capsys.readouterr().err
    assert main(["prepare", "--dataset", "synthetic", "--source", str(celeba_tree)]) == 2


def test_prepare_with_decode_workers_matches(celeba_tree, tmp_path):
    a, b = LocalStore(str(tmp_path / "a")), LocalStore(str(tmp_path / "b"))
    ma = _build(celeba, celeba_tree, a)
    mb = build_pack(celeba, str(celeba_tree), b, pack_prefix("celeba"), strict=False, shard_size=2, workers=2)
    for s in ma["splits"]:
        assert [x["sha256"] for x in ma["splits"][s]["images"]] == [x["sha256"] for x in mb["splits"][s]["images"]]
    assert np.frombuffer(a.get_bytes("packs/celeba/val/labels.u8"), np.uint8).shape == (2 * 40,)


# -- streamed into memory (dataset.pack_to: memory; a Kubernetes pod's default) ---------------------
def test_a_pack_streamed_into_memory_equals_the_cached_one_and_touches_no_disk(celeba_tree, tmp_path, monkeypatch):
    store = CountingStore(str(tmp_path / "store"))
    manifest = _build(celeba, celeba_tree, store)
    n_files = sum(len(e["images"]) + 2 for e in manifest["splits"].values())
    store.reads = 0
    streamed = load_dataset(_cfg("celeba", celeba_tree, tmp_path, "dataset.pack_to=memory"), store=store)
    assert store.reads == 1 + n_files  # the manifest, then every file once
    assert not (tmp_path / "cache").exists()  # nothing on disk
    # auto follows $AAL_K8S_PACK_TO, which the Kubernetes backend sets in each pod
    monkeypatch.setenv("AAL_K8S_PACK_TO", "memory")
    assert load_dataset(_cfg("celeba", celeba_tree, tmp_path), store=store).source == streamed.source
    assert not (tmp_path / "cache").exists()
    monkeypatch.delenv("AAL_K8S_PACK_TO")
    cached = load_dataset(_cfg("celeba", celeba_tree, tmp_path), store=store)
    assert (tmp_path / "cache").is_dir() and streamed.source == cached.source
    for split in ("train", "val", "test"):
        s, c = streamed.splits[split], cached.splits[split]
        assert torch.equal(s.images, c.images) and torch.equal(s.labels, c.labels)


def test_a_streamed_pack_is_verified_and_refused_above_the_containers_memory_limit(celeba_tree, tmp_path, monkeypatch):
    from aal_k8s.data import pack

    store = CountingStore(str(tmp_path / "store"))
    manifest = _build(celeba, celeba_tree, store)
    key = "packs/celeba/val/images-00000.u8"
    data = bytearray(store.get_bytes(key))
    data[7] ^= 0xFF
    store.put_bytes(key, bytes(data))
    with pytest.raises(DatasetError) as e:
        load_dataset(_cfg("celeba", celeba_tree, tmp_path, "dataset.pack_to=memory"), store=store)
    assert "val/images-00000.u8: checksum mismatch" in e.value.message and "\n" not in e.value.message
    size = sum(f["size"] for f in pack.pack_files(manifest))
    limit = tmp_path / "memory.max"
    limit.write_text(f"{size - 1}\n")
    monkeypatch.setattr(pack, "CGROUP_MEMORY_MAX", str(limit))
    store.reads = 0
    with pytest.raises(DatasetError) as e:
        load_dataset(_cfg("celeba", celeba_tree, tmp_path, "dataset.pack_to=memory"), store=store)
    assert "does not fit in this container's memory limit" in e.value.message and "k8s.memory_limit" in e.value.message
    assert store.reads == 1  # refused after the manifest, before any shard
    limit.write_text("max\n")  # no limit
    monkeypatch.setenv("AAL_K8S_PACK_TO", "ram")
    with pytest.raises(DatasetError, match=r"\$AAL_K8S_PACK_TO='ram': expected disk or memory"):
        load_dataset(_cfg("celeba", celeba_tree, tmp_path), store=store)


def test_a_worker_trains_from_a_streamed_pack_as_from_the_cached_one(celeba_tree, tmp_path, monkeypatch):
    import io

    from aal_k8s.planner import plan_stage
    from aal_k8s.store import ExperimentStore
    from aal_k8s.worker import execute

    store = LocalStore(str(tmp_path / "store"))
    _build(celeba, celeba_tree, store)
    over = ["dataset.strict_counts=false", "model.backbone=small_cnn", "model.image_size=32", "train.epochs=1",
            "train.batch_size=4", "train.device=cpu", "train.threads=1", f"dataset.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    accs = {}
    for mode in ("memory", "disk"):
        monkeypatch.setenv("AAL_K8S_PACK_TO", mode)  # as the Kubernetes backend sets it in the pod
        exp = ExperimentStore(store, f"celeba-{mode}")
        spec = plan_stage("single", load_config(dataset="celeba", overrides=[*over, f"experiment=celeba-{mode}"]),
                          attributes=["Smiling"])[0]  # fmt: skip
        exp.write_spec(spec)
        log = io.StringIO()
        assert execute(store.uri, exp.experiment, spec.run_id, log=log) == 0, log.getvalue()
        accs[mode] = exp.read_metrics(spec.run_id)["val_acc"]
        assert (tmp_path / "cache").exists() == (mode == "disk")  # streamed: no pack on disk
    assert accs["memory"] == accs["disk"]

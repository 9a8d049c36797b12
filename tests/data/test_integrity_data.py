"""Issue 19: a real dataset root that exists but is empty or malformed is one line before any run
is submitted; prepare leaves no partial shards behind on a bad image."""

import os

import pytest
from realdata_fixtures import make_celeba, make_duke

from aal_k8s.cli import main


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _empty(root):
    root.mkdir()


def _truncated_celeba(root):
    make_celeba(root)
    attr = root / "list_attr_celeba.txt"
    attr.write_text(attr.read_text()[:150])


def _celeba_without_images(root):
    make_celeba(root)
    for f in (root / "img_align_celeba").iterdir():
        f.unlink()


@pytest.mark.parametrize(
    "dataset, make, fragment",
    [
        ("celeba", _empty, "list_attr_celeba.txt"),
        ("celeba", _truncated_celeba, "list_attr_celeba.txt"),
        ("celeba", _celeba_without_images, "img_align_celeba"),
        ("duke", _empty, "duke_attribute.mat"),
    ],
    ids=["celeba empty", "celeba truncated labels", "celeba no images", "duke empty"],
)
@pytest.mark.parametrize("command", ["submit", "pipeline"])
def test_an_empty_or_malformed_root_is_one_line_before_any_run_is_submitted(
    command, dataset, make, fragment, tmp_path, capsys
):
    root, store = tmp_path / dataset, tmp_path / "store"
    make(root)
    argv = [command, "--dataset", dataset, "--store", str(store), "--set", f"dataset.root={root}",
            "--set", "dataset.strict_counts=false"]  # fmt: skip
    if command == "submit":
        argv += ["--stage", "single"]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert fragment in line
    assert not store.exists()


@pytest.mark.parametrize("command", ["submit", "pipeline"])
def test_an_unsealed_pack_manifest_is_one_line_before_any_run_is_submitted(command, tmp_path, capsys):
    import json

    root, store = tmp_path / "celeba", tmp_path / "store"
    make_celeba(root)
    prep = ["prepare", "--dataset", "celeba", "--source", str(root), "--store", str(store), "--workers", "0",
            "--set", "dataset.strict_counts=false"]  # fmt: skip
    assert main(prep) == 0
    manifest = store / "packs" / "celeba" / "manifest.json"
    doc = json.loads(manifest.read_text())
    del doc["manifest_sha256"]
    manifest.write_text(json.dumps(doc))
    capsys.readouterr()
    argv = [command, "--dataset", "celeba", "--store", str(store), "--set", "dataset.strict_counts=false"]
    if command == "submit":
        argv += ["--stage", "single"]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{manifest}: pack manifest has no manifest_sha256" in line and "aal-k8s prepare --dataset celeba" in line
    assert not (store / "celeba").exists()  # no experiment, no run spec: nothing submitted


def test_a_valid_small_root_passes_the_check(tmp_path):
    from aal_k8s.config import load_config
    from aal_k8s.data.sources import check_source

    make_duke(tmp_path / "duke")
    cfg = load_config(dataset="duke", overrides=[f"dataset.root={tmp_path / 'duke'}", "dataset.strict_counts=false"])
    check_source(cfg.dataset, None, local=True)


def test_prepare_with_a_bad_image_leaves_no_partial_shards_and_no_stale_manifest(tmp_path, capsys):
    source, store = tmp_path / "celeba", tmp_path / "store"
    make_celeba(source, counts=(6, 2, 2))
    argv = ["prepare", "--dataset", "celeba", "--source", str(source), "--store", str(store), "--workers", "0",
            "--shard-size", "2", "--set", "dataset.strict_counts=false"]  # fmt: skip
    assert main(argv) == 0  # a complete pack, which the next, failing prepare replaces
    names = sorted(os.listdir(source / "img_align_celeba"))
    (source / "img_align_celeba" / names[-1]).write_bytes(b"\xff\xd8 broken")  # late: shards are written first
    capsys.readouterr()
    assert main(argv) == 2
    assert "unreadable image" in capsys.readouterr().err
    left = [os.path.join(d, f) for d, _, fs in os.walk(store / "packs") for f in fs]
    assert left == []  # no partial shards, and no manifest pointing at overwritten ones

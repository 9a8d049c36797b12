"""``aal-k8s download`` and ``aal-k8s predict`` on a final model set built from untrained networks
(fast: no training here; the S3 pipeline test does it end to end)."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

from aal_k8s.cli import main
from aal_k8s.config import load_config
from aal_k8s.data import attribute_names, load_dataset
from aal_k8s.checksums import seal
from aal_k8s.final import build_final
from aal_k8s.model import AttributeNet
from aal_k8s.planner import plan_stage
from aal_k8s.reduce import Choice, ReduceOutput
from aal_k8s.store import ExperimentStore, open_store

ATTRS = attribute_names("synthetic")


def _flags(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def build_model_set(cfg) -> tuple[ExperimentStore, dict[str, AttributeNet]]:
    """Committed single-task runs with seeded random weights, reduced and turned into final/."""
    exp = ExperimentStore(open_store(cfg.store.uri, cfg.store), cfg.experiment_name)
    out = ReduceOutput(dataset="synthetic", attributes=ATTRS)
    nets = {}
    for i, spec in enumerate(plan_stage("single", cfg)):
        a = spec.primary[0]
        torch.manual_seed(100 + i)
        net = AttributeNet("small_cnn", "none", [a]).eval()
        nets[a] = net
        weights = save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()})
        exp.write_spec(spec)
        exp.commit_run(spec, {"best.safetensors": weights}, {"heads": [a], "val_acc": {a: 0.5}, "test_acc": {a: 0.5}})
        out.final[a] = Choice(a, "single", spec.run_id, None, None, 0.5 + i / 100, 0.4 + i / 100)
    build_final(exp, cfg, out)
    return exp, nets


@pytest.fixture
def model_set(tiny_cfg):
    return build_model_set(tiny_cfg)


@pytest.fixture
def images(tiny_cfg, tmp_path) -> list[str]:
    """Five test images of the synthetic dataset as PNG files (lossless: same pixels)."""
    split = load_dataset(tiny_cfg.dataset).splits["test"]
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i in range(5):
        p = folder / f"img{i}.png"
        Image.fromarray(split.images[i].permute(1, 2, 0).numpy()).save(p)
        paths.append(str(p))
    return paths


def _download(tiny_overrides, dest, *extra) -> int:
    return main(["download", "--to", str(dest), *extra, *_flags(tiny_overrides)])


def test_download_fetches_every_classifier_verified_and_writes_the_manifest(
    model_set, tiny_overrides, tmp_path, capsys
):
    exp, _ = model_set
    dest = tmp_path / "models"
    assert _download(tiny_overrides, dest) == 0
    out = capsys.readouterr().out
    assert "6 classifiers in" in out and "(6 downloaded, 0 already there)" in out
    manifest = json.loads((dest / "manifest.json").read_text())
    assert [m["attribute"] for m in manifest["models"]] == ATTRS
    assert manifest["source"] == {"store": exp.store.uri, "experiment": "synthetic"}
    stored = {m["attribute"]: m["file"] for m in json.loads(exp.store.get_bytes(exp.key("final", "manifest.json")))["models"]}
    for m in manifest["models"]:
        assert (dest / m["file"]).read_bytes() == exp.store.get_bytes(exp.key("final", stored[m["attribute"]]))
        for field in ("attribute", "partner", "lambda", "val_acc", "test_acc", "sha256", "size", "source"):
            assert field in m
    assert manifest["input"]["image_size"] == 16 and manifest["input"]["mean"] == [0.45, 0.42, 0.45]
    assert manifest["backbone"] == "small_cnn" and manifest["format"] == "safetensors"
    assert sorted(os.listdir(dest / "models")) == sorted(f"{a}.safetensors" for a in ATTRS)


def test_download_again_skips_verified_files_and_replaces_damaged_ones(model_set, tiny_overrides, tmp_path, capsys):
    dest = tmp_path / "models"
    assert _download(tiny_overrides, dest) == 0
    before = {f: os.stat(dest / "models" / f).st_mtime_ns for f in os.listdir(dest / "models")}
    capsys.readouterr()
    assert _download(tiny_overrides, dest) == 0
    assert "(0 downloaded, 6 already there)" in capsys.readouterr().out
    assert {f: os.stat(dest / "models" / f).st_mtime_ns for f in before} == before
    damaged = dest / "models" / "ring.safetensors"
    good = damaged.read_bytes()
    damaged.write_bytes(good[:-10] + b"0123456789")
    assert _download(tiny_overrides, dest) == 0
    out = capsys.readouterr().out
    assert "ring: models/ring.safetensors" in out and "downloaded and verified" in out and "(1 downloaded, 5" in out
    assert damaged.read_bytes() == good


def test_an_interrupted_download_resumes_where_it_stopped(model_set, tiny_overrides, tmp_path, capsys, monkeypatch):
    from aal_k8s.store.local import LocalStore

    dest = tmp_path / "models"
    real = LocalStore.get_file
    calls = []

    def flaky(self, key, path):
        calls.append(key)
        if len(calls) == 3:
            with open(path, "wb") as f:  # a partial temp file, as a killed download leaves it
                f.write(b"partial")
            raise KeyboardInterrupt
        return real(self, key, path)

    monkeypatch.setattr(LocalStore, "get_file", flaky)
    assert _download(tiny_overrides, dest) == 130
    assert not (dest / "manifest.json").exists()  # incomplete: no manifest
    assert sorted(os.listdir(dest / "models")) == [f"{a}.safetensors" for a in sorted(ATTRS[:2])]
    monkeypatch.setattr(LocalStore, "get_file", real)
    (dest / "models" / ".part-cross.safetensors-0badf00d").write_bytes(b"left by a SIGKILL")
    capsys.readouterr()
    assert _download(tiny_overrides, dest) == 0
    assert "(4 downloaded, 2 already there)" in capsys.readouterr().out
    assert sorted(os.listdir(dest / "models")) == sorted(f"{a}.safetensors" for a in ATTRS)  # no temp files
    assert (dest / "manifest.json").exists()


def test_download_of_some_attributes_fetches_only_those(model_set, tiny_overrides, tmp_path):
    dest = tmp_path / "two"
    assert _download(tiny_overrides, dest, "--attrs", "ring,5") == 0
    manifest = json.loads((dest / "manifest.json").read_text())
    assert [m["attribute"] for m in manifest["models"]] == ["ring", "red_tint"]
    assert sorted(os.listdir(dest / "models")) == ["red_tint.safetensors", "ring.safetensors"]


def test_download_fetches_the_model_card_beside_the_manifest(model_set, tiny_overrides, tmp_path, capsys):
    exp, _ = model_set
    card_key = exp.key("final", "MODEL_CARD.md")
    dest = tmp_path / "two"
    assert _download(tiny_overrides, dest, "--attrs", "ring") == 0
    assert (dest / "MODEL_CARD.md").read_bytes() == exp.store.get_bytes(card_key)
    assert "| ring |" in (dest / "MODEL_CARD.md").read_text()
    assert "MODEL_CARD.md: model card downloaded (it describes all 6 classifiers of the set)" in capsys.readouterr().out
    # a set finalised before cards existed: no card, and none left over from an earlier download
    exp.store.delete(card_key)
    assert _download(tiny_overrides, dest, "--attrs", "ring") == 0
    assert not (dest / "MODEL_CARD.md").exists()
    assert "MODEL_CARD.md: none in" in capsys.readouterr().out


def test_download_of_a_corrupted_model_names_its_s3_key_and_keeps_nothing_of_it(
    s3_uri, bucket, raw_s3, tiny_overrides, tmp_path, capsys
):
    over = [o for o in tiny_overrides if not o.startswith("store.uri=")] + [f"store.uri={s3_uri}"]
    exp, _ = build_model_set(load_config(overrides=over, dataset="synthetic"))
    [ring] = [m["file"] for m in json.loads(exp.store.get_bytes(exp.key("final", "manifest.json")))["models"] if m["attribute"] == "ring"]
    key = f"aal/synthetic/final/{ring}"
    body = raw_s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    raw_s3.put_object(Bucket=bucket, Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]))
    dest = tmp_path / "models"
    capsys.readouterr()
    assert _download(over, dest) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"{s3_uri}/synthetic/final/{ring}: checksum mismatch" in err
    assert not (dest / "models" / "ring.safetensors").exists() and not (dest / "manifest.json").exists()
    assert [f for f in os.listdir(dest / "models") if f.startswith(".")] == []


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--attrs", "Smiling"], "no classifier for attribute(s) 'Smiling' (available: square, ring"),
        (["--experiment", "nothing-here"], "experiment 'nothing-here' has no final model set"),
    ],
)
def test_download_bad_input_is_one_line_exit_2(model_set, tiny_overrides, tmp_path, capsys, extra, fragment):
    assert _download(tiny_overrides, tmp_path / "m", *extra) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def _predict(*argv) -> int:
    return main(["predict", *argv])


def _reference_probabilities(nets, cfg, image_paths) -> dict[str, list[float]]:
    from aal_k8s.data import normalisation

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalisation("synthetic"))
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                     for p in image_paths]).float() / 255  # fmt: skip
    x = (x - mean) / std
    with torch.no_grad():
        return {a: torch.sigmoid(net(x)[:, 0]).double().tolist() for a, net in nets.items()}


def test_predict_gives_the_probabilities_of_the_trained_network_as_json(
    model_set, tiny_overrides, tiny_cfg, images, tmp_path, capsys
):
    _, nets = model_set
    dest = tmp_path / "models"
    assert _download(tiny_overrides, dest) == 0
    capsys.readouterr()
    assert _predict("--models", str(dest), "--format", "json", *images) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in result["predictions"]] == images and result["attributes"] == ATTRS
    want = _reference_probabilities(nets, tiny_cfg, images)
    for i, r in enumerate(result["predictions"]):
        for a in ATTRS:
            p = r["attributes"][a]["probability"]
            assert p == pytest.approx(want[a][i], abs=1e-6)
            assert r["attributes"][a]["decision"] == (p >= 0.5)


def test_predict_prints_a_table_or_csv_for_a_folder_and_resizes_other_sizes(
    model_set, tiny_overrides, images, tmp_path, capsys
):
    dest = tmp_path / "models"
    assert _download(tiny_overrides, dest, "--attrs", "square,ring") == 0
    folder = os.path.dirname(images[0])
    Image.new("RGB", (40, 30), (200, 10, 10)).save(os.path.join(folder, "big.jpg"))
    capsys.readouterr()
    assert _predict("--models", str(dest), folder) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["image", "square", "ring"]
    assert len(lines) == 1 + 6 + 1 and lines[1].startswith(os.path.join(folder, "big.jpg"))
    assert all(ln.split()[2] in ("yes", "no") and ln.split()[4] in ("yes", "no") for ln in lines[1:-1])
    assert _predict("--models", str(dest), "--format", "csv", "--threshold", "0.3", images[0]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["attribute"] for r in rows] == ["square", "ring"]
    assert all(r["decision"] == str(int(float(r["probability"]) >= 0.3)) for r in rows)


def _bad_cases(dest, images, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    return {
        "missing folder": (["--models", str(tmp_path / "nope"), images[0]], f"{tmp_path / 'nope'}: no such folder"),
        "no manifest": (["--models", str(empty), images[0]], f"{empty / 'manifest.json'}: not found"),
        "unreadable image": (["--models", str(dest), str(text)], f"{text}: unreadable image"),
        "missing image": (["--models", str(dest), str(tmp_path / "x.jpg")], f"{tmp_path / 'x.jpg'}: no such file"),
        "folder without images": (["--models", str(dest), str(empty)], f"{empty}: no images in this folder"),
        "unknown attribute": (["--models", str(dest), "--attrs", "Smiling", images[0]], "no classifier for attribute"),
    }


@pytest.mark.parametrize("case", ["missing folder", "no manifest", "unreadable image", "missing image",
                                  "folder without images", "unknown attribute"])  # fmt: skip
def test_predict_bad_input_is_one_line_naming_the_file_exit_2(
    case, model_set, tiny_overrides, images, tmp_path, capsys
):
    dest = tmp_path / "models"
    assert _download(tiny_overrides, dest) == 0
    argv, fragment = _bad_cases(dest, images, tmp_path)[case]
    capsys.readouterr()
    assert _predict(*argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_predict_refuses_a_model_file_that_fails_its_checksum_or_does_not_fit(
    model_set, tiny_overrides, images, tmp_path, capsys
):
    dest = tmp_path / "models"
    assert _download(tiny_overrides, dest) == 0
    f = dest / "models" / "cross.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-4] + b"\0\0\0\0")
    capsys.readouterr()
    assert _predict("--models", str(dest), images[0]) == 2
    err = capsys.readouterr().err
    assert f"{f}: checksum mismatch" in err and len(err.strip().splitlines()) == 1
    f.write_bytes(data)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["backbone"] = "resnet18"  # the weights are a small_cnn's: strict loading refuses them
    (dest / "manifest.json").write_text(json.dumps(seal(manifest, "manifest_sha256")))  # re-sealed on purpose
    assert _predict("--models", str(dest), "--attrs", "square", images[0]) == 2
    err = capsys.readouterr().err
    assert f"{dest / 'models' / 'square.safetensors'}: weights do not fit backbone 'resnet18'" in err
    assert len(err.strip().splitlines()) == 1


def test_the_final_model_files_are_byte_reproducible(tiny_overrides, tmp_path):
    """Same runs -> same files, whichever store: the manifest's sha256 sums match across builds."""
    sums = []
    for name in ("one", "two"):
        over = [o for o in tiny_overrides if not o.startswith("store.uri=")] + [f"store.uri={tmp_path / name}"]
        exp, _ = build_model_set(load_config(overrides=over, dataset="synthetic"))
        sums.append([m["sha256"] for m in exp.get_json("final", "manifest.json")["models"]])
    assert sums[0] == sums[1]


@pytest.mark.parametrize("key", ["mean", "std"])
def test_predict_and_download_refuse_a_manifest_without_the_training_normalisation(
    key, model_set, tiny_overrides, images, tmp_path, capsys
):
    exp, _ = model_set
    dest = tmp_path / "models"
    assert _download(tiny_overrides, dest) == 0
    manifest = json.loads((dest / "manifest.json").read_text())
    del manifest["input"][key]  # used to mean 0 (mean) or 1 (std): silently wrong inputs
    manifest = seal(manifest, "manifest_sha256")  # re-sealed: the check under test is not the checksum
    (dest / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert _predict("--models", str(dest), images[0]) == 2
    err = capsys.readouterr().err
    assert f"{dest / 'manifest.json'}: input.{key} must list 3 numbers" in err and len(err.strip().splitlines()) == 1
    assert capsys.readouterr().out == ""
    # the store's manifest is checked the same way before anything is downloaded
    exp.put_sealed("final", "manifest.json", obj=manifest, field="manifest_sha256")
    fresh = tmp_path / "fresh"
    assert _download(tiny_overrides, fresh) == 2
    err = capsys.readouterr().err
    assert f"final/manifest.json: input.{key} must list 3 numbers" in err and len(err.strip().splitlines()) == 1
    assert not fresh.exists()


def test_predict_reads_a_bmp_and_the_first_frame_of_an_animated_gif(model_set, tiny_overrides, images, tmp_path, capsys):
    dest = tmp_path / "models"
    assert _download(tiny_overrides, dest, "--attrs", "square") == 0
    src = Image.open(images[0]).convert("RGB")
    bmp, gif, first = tmp_path / "same.bmp", tmp_path / "moving.gif", tmp_path / "first.png"
    src.save(bmp)  # a format torchvision does not decode: read with PIL, same pixels
    src.save(gif, save_all=True, append_images=[Image.new("RGB", src.size, (255, 0, 0))])
    Image.open(gif).convert("RGB").save(first)  # the GIF's (palette) first frame, losslessly
    capsys.readouterr()
    assert _predict("--models", str(dest), "--format", "json", images[0], str(bmp), str(gif), str(first)) == 0
    p = [r["attributes"]["square"]["probability"] for r in json.loads(capsys.readouterr().out)["predictions"]]
    assert p[0] == p[1] and p[2] == p[3]

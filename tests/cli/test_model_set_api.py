"""`aal_k8s.load_model_set`: the Python API gives `aal-k8s predict`'s numbers for paths, PIL
images and tensor batches, loads from a folder or straight from the store, and pickles."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from test_download_predict import ATTRS, _download, build_model_set

import aal_k8s
from aal_k8s.errors import AALError
from aal_k8s.modelset import predict


@pytest.fixture
def models(tiny_cfg, tiny_overrides, tmp_path):
    build_model_set(tiny_cfg)
    dest = tmp_path / "models"
    assert _download(tiny_overrides, dest) == 0
    return str(dest)


@pytest.fixture
def images(tiny_cfg, tmp_path) -> list[str]:
    from aal_k8s.data import load_dataset

    split = load_dataset(tiny_cfg.dataset).splits["test"]
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(split.images[i].permute(1, 2, 0).numpy()).save(p)
        paths.append(str(p))
    return paths


def _cli_probabilities(models, images):
    rows = predict(models, images)["predictions"]
    return torch.tensor([[r["attributes"][a]["probability"] for a in ATTRS] for r in rows], dtype=torch.float64)


def test_paths_pil_images_and_uint8_batches_give_the_predict_commands_probabilities(models, images):
    ms = aal_k8s.load_model_set(models)
    expected = _cli_probabilities(models, images)
    by_path = ms.predict(images)
    assert by_path.attributes == ATTRS and torch.equal(by_path.probabilities, expected)
    assert torch.equal(by_path.decisions, expected >= 0.5) and by_path.threshold == 0.5
    pil = [Image.open(p) for p in images]
    assert torch.equal(ms.predict(pil).probabilities, expected)
    batch = torch.stack([torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) for im in pil])
    assert torch.equal(ms.predict(batch).probabilities, expected)
    one = ms.predict(images[0]).as_dicts()[0]["square"]  # a batch of one: float rounding may differ
    assert one["probability"] == pytest.approx(float(expected[0, 0]), rel=1e-5) and one["decision"] == bool(expected[0, 0] >= 0.5)


def test_a_model_set_loads_straight_from_the_store_and_pickles(tiny_cfg, images, tmp_path):
    exp, _ = build_model_set(tiny_cfg)
    ms = aal_k8s.load_model_set(f"{exp.store.uri}/{exp.experiment}", attrs=["ring", "cross"], cache_dir=str(tmp_path / "cache"))
    assert ms.attributes == ["ring", "cross"]
    again = pickle.loads(pickle.dumps(ms))
    assert torch.equal(again.predict(images).probabilities, ms.predict(images).probabilities)


def test_anything_but_paths_images_or_tensors_is_a_one_line_error(models):
    with pytest.raises(AALError, match="expected image paths, PIL images or a tensor, got int"):
        aal_k8s.load_model_set(models).predict([1, 2])


def test_predict_searches_folders_recursively_and_says_what_it_skipped(models, images, tmp_path, capsys):
    import shutil

    from aal_k8s.cli import main

    top = tmp_path / "photos"
    (top / "b" / "deeper").mkdir(parents=True)
    shutil.copy(images[0], top / "z.png")
    shutil.copy(images[1], top / "b" / "deeper" / "a.png")
    (top / "b" / "notes.txt").write_text("not an image")
    assert main(["predict", "--models", models, "--format", "csv", str(top)]) == 0
    captured = capsys.readouterr()
    rows = captured.out.strip().splitlines()[1:]  # one row per image and attribute
    assert list(dict.fromkeys(r.split(",")[0] for r in rows)) == [str(top / "b" / "deeper" / "a.png"), str(top / "z.png")]
    assert captured.err.strip() == f"predict: skipped 1 file(s) that are not images: {top / 'b' / 'notes.txt'}"

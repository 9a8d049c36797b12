"""`aal-k8s export`: each format reloads to the eager model's logits; the whole set is one module."""

import json

import pytest
import torch
from test_download_predict import ATTRS, _download, build_model_set

import aal_k8s
from aal_k8s.cli import main
from aal_k8s.export import sample_inputs


@pytest.fixture
def models(tiny_cfg, tiny_overrides, tmp_path):
    build_model_set(tiny_cfg)
    dest = tmp_path / "models"
    assert _download(tiny_overrides, dest) == 0
    return str(dest)


def _eager(models, attrs=None):
    ms = aal_k8s.load_model_set(models, attrs)
    x = sample_inputs(16, seed=1)
    with torch.inference_mode():
        return x, torch.stack([net(x) for net in ms.classifiers.values()], 1)


def test_torchscript_of_the_whole_set_gives_every_attributes_logits_in_one_call(models, tmp_path, capsys):
    out = tmp_path / "set.pt"
    assert main(["export", "--models", models, "--format", "torchscript", "-o", str(out)]) == 0
    assert "6 attribute(s); max deviation from eager" in capsys.readouterr().out
    x, expected = _eager(models)
    got = torch.jit.load(str(out))(x)
    assert got.shape == (4, 6) and torch.allclose(got, expected, atol=1e-5)
    info = json.loads((tmp_path / "set.pt.json").read_text())
    assert info["attributes"] == ATTRS and info["output"].startswith("logits [B, A]")


def test_torch_export_of_one_classifier_takes_any_batch_size(models, tmp_path):
    out = tmp_path / "ring.pt2"
    assert main(["export", "--models", models, "--format", "export", "--attr", "ring", "-o", str(out)]) == 0
    x, expected = _eager(models, ["ring"])
    program = torch.export.load(str(out)).module()
    assert torch.allclose(program(x), expected[:, 0], atol=1e-5)
    assert program(x[:1]).shape == (1,)  # the batch dimension is dynamic


def test_onnx_export_matches_the_eager_model_in_onnxruntime(models, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "set.onnx"
    assert main(["export", "--models", models, "--format", "onnx", "-o", str(out)]) == 0
    x, expected = _eager(models)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-4)


def test_an_export_that_deviates_from_the_eager_model_is_not_written(models, tmp_path, monkeypatch, capsys):
    import aal_k8s.export as export

    monkeypatch.setitem(export._EXPORTERS, "torchscript", lambda module, x, path: module(x) + 1.0)
    out = tmp_path / "bad.pt"
    assert main(["export", "--models", models, "--format", "torchscript", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "deviates from the eager model by 1" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "bad.pt.json").exists()


def test_onnx_without_its_packages_is_a_one_line_error(models, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    assert main(["export", "--models", models, "--format", "onnx", "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == 'aal-k8s: error: export: ONNX needs onnx, onnxscript and onnxruntime (pip install "aal-k8s[onnx]")'
    assert not (tmp_path / "x.onnx").exists()

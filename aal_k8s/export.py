"""Export a downloaded model set, or one classifier of it, for serving without aal-k8s.

Formats: ``torchscript`` (``torch.jit.trace``, a ``.pt`` file for ``torch.jit.load``), ``export``
(``torch.export``, a ``.pt2`` file for ``torch.export.load``) and ``onnx`` (``torch.onnx.export``,
``pip install "aal-k8s[onnx]"``; checked with onnxruntime). The whole set exports as one module
whose ``forward(x)`` gives the logits of every attribute at once, ``[B, A]`` (attribute order: the
manifest's, also written to ``<file>.json`` with the input conventions); one classifier gives
``[B]``. Inputs: the model inputs ``[B, 3, S, S]`` that ``aal_k8s.modelset.preprocess`` makes.

Every export is checked before it is kept: the exported program and the eager model run on the
same seeded sample batch and must agree within ``ATOL``; otherwise nothing is written.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from aal_k8s.errors import AALError

FORMATS = {"torchscript": ".pt", "export": ".pt2", "onnx": ".onnx"}
ATOL = 1e-4  # logits; exported kernels may fuse or reorder float operations
SAMPLE_BATCH = 4


class SetModule(nn.Module):
    """Every classifier of a model set in one module: ``forward(x) -> logits [B, A]``."""

    def __init__(self, classifiers: list[nn.Module]):
        super().__init__()
        self.classifiers = nn.ModuleList(classifiers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([c(x) for c in self.classifiers], dim=1)


def sample_inputs(image_size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(SAMPLE_BATCH, 3, image_size, image_size, generator=gen)


def export_model_set(models_dir: str, fmt: str, out_path: str, attribute: str | None = None) -> dict:
    """Write ``out_path`` (and ``out_path + ".json"``); returns that JSON: format, attributes,
    input and output conventions, and the largest deviation from the eager model on the check."""
    from aal_k8s.modelset import load_model_set

    if fmt not in FORMATS:
        raise AALError(f"export: format {fmt!r} is not one of {', '.join(FORMATS)}")
    ms = load_model_set(models_dir, [attribute] if attribute else None)
    module = (ms.classifiers[attribute] if attribute else SetModule(list(ms.classifiers.values()))).eval()
    x = sample_inputs(int(ms.manifest["input"]["image_size"]))
    with torch.inference_mode():
        expected = module(x)
    tmp = f"{out_path}.part"
    try:
        got = _EXPORTERS[fmt](module, x, tmp)
        deviation = float((got - expected).abs().max())
        if not deviation <= ATOL:
            raise AALError(f"export: the {fmt} program deviates from the eager model by {deviation:.3g} (> {ATOL}); nothing written")
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    info = {
        "format": fmt,
        "file": os.path.basename(out_path),
        "attributes": [attribute] if attribute else ms.attributes,
        "input": dict(ms.manifest["input"], shape="[B, 3, image_size, image_size] after aal_k8s.modelset.preprocess"),
        "output": "logits [B]" if attribute else "logits [B, A], attributes in the order listed",
        "threshold": float(ms.manifest.get("output", {}).get("threshold", 0.5)),
        "checked": {"sample_batch": SAMPLE_BATCH, "max_abs_deviation": deviation, "atol": ATOL},
    }
    with open(out_path + ".json", "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    return info


def _torchscript(module: nn.Module, x: torch.Tensor, path: str) -> torch.Tensor:
    with torch.inference_mode():
        traced = torch.jit.trace(module, x)
    traced.save(path)
    loaded = torch.jit.load(path)
    with torch.inference_mode():
        return loaded(x)


def _torch_export(module: nn.Module, x: torch.Tensor, path: str) -> torch.Tensor:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (x,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    with torch.inference_mode():
        return loaded(x)


def _onnx(module: nn.Module, x: torch.Tensor, path: str) -> torch.Tensor:
    try:
        import onnxruntime  # the check below runs the exported file in it
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError:
        raise AALError('export: ONNX needs onnx, onnxscript and onnxruntime (pip install "aal-k8s[onnx]")') from None

    torch.onnx.export(module, (x,), path, input_names=["x"], output_names=["logits"],
                      dynamic_shapes={"x": {0: "batch"}}, dynamo=True)  # fmt: skip
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


_EXPORTERS = {"torchscript": _torchscript, "export": _torch_export, "onnx": _onnx}

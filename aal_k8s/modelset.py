"""The final model set outside the store: download it (verified, atomic, resumable), load it,
and predict attributes of images with it.

A downloaded folder looks like the store's ``final/``::

    DIR/manifest.json                   written last: a folder with a manifest is complete
    DIR/models/<attribute>.safetensors  backbone.* + head.weight [1, D] + head.bias [1]

Every file is checked against the manifest's size and sha256 when downloaded and again when
loaded. Only safetensors and JSON are read; nothing is unpickled.
"""

from __future__ import annotations

import glob
import json
import os

from aal_k8s.data import DATASETS
from aal_k8s.errors import AALError, StageOrderError, StoreError
from aal_k8s.store import ExperimentStore
from aal_k8s.store.base import atomic_write
from aal_k8s.store.layout import check_file, file_sha256

MANIFEST = "manifest.json"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


# -- manifest ---------------------------------------------------------------------------------
def _check_manifest(manifest, where: str) -> dict:
    """The manifest if it has what download/predict need; else an error naming ``where``."""
    ok = isinstance(manifest, dict) and isinstance(manifest.get("models"), list)
    if ok:
        need = ("attribute", "file", "size", "sha256")
        ok = all(isinstance(m, dict) and all(k in m for k in need) for m in manifest["models"])
        ok = ok and isinstance(manifest.get("input"), dict) and "image_size" in manifest["input"]
        ok = ok and isinstance(manifest.get("backbone"), str)
    if not ok:
        raise AALError(f"{where}: not a final model set manifest (models, input, backbone missing)")
    for key in ("mean", "std"):
        # no default: 0/1 instead of the training normalisation would give confident wrong answers
        v = manifest["input"].get(key)
        numbers = isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        if not (numbers and len(v) == 3):
            raise AALError(
                f"{where}: input.{key} must list 3 numbers (the normalisation the models were trained with), got {v!r}"
            )
    if not all(x > 0 for x in manifest["input"]["std"]):
        raise AALError(f"{where}: input.std must be positive, got {manifest['input']['std']!r}")
    if manifest.get("dataset") not in DATASETS:  # it decides how images are decoded and resized
        raise AALError(f"{where}: dataset {manifest.get('dataset')!r} is not one of {', '.join(DATASETS)}")
    for m in manifest["models"]:
        parts = m["file"].replace("\\", "/").split("/")
        if m["file"].startswith("/") or ".." in parts:
            raise AALError(f"{where}: model file {m['file']!r} points outside the model set")
    return manifest


def select_models(manifest: dict, attrs: list[str] | None, where: str) -> list[dict]:
    """The manifest's entries for ``attrs`` (names or 1-based dataset indices); all when None."""
    models = manifest["models"]
    if not attrs:
        return list(models)
    by_name = {m["attribute"]: m for m in models}
    by_index = {str(m.get("index")): m for m in models if m.get("index") is not None}
    chosen, bad = [], []
    for a in attrs:
        m = by_name.get(a) or by_index.get(a)
        if m is None:
            bad.append(a)
        elif m not in chosen:
            chosen.append(m)
    if bad:
        raise AALError(
            f"{where}: no classifier for attribute(s) {', '.join(map(repr, bad))} (available: {', '.join(by_name)})"
        )
    return chosen


# -- download -----------------------------------------------------------------------------------
def download_final(exp: ExperimentStore, dest: str, attrs: list[str] | None = None, log=None) -> dict:
    """Fetch the final model set (or ``attrs`` of it) into ``dest``; returns the written manifest.

    Files already present with the right sha256 are skipped; others are fetched to a temp file,
    verified, then renamed into place; ``manifest.json`` is written last. An interrupted download
    leaves only verified files behind (and temp files, removed next time), so running it again
    resumes where it stopped."""
    key = exp.key("final", MANIFEST)
    where = exp.store.url(key)
    if not exp.store.exists(key):
        raise StageOrderError(
            f"experiment {exp.experiment!r} has no final model set ({where} not found): "
            "run `aal-k8s final` (or the pipeline) first"
        )
    manifest = _check_manifest(exp.get_json("final", MANIFEST), where)
    chosen = select_models(manifest, attrs, where)
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise AALError(f"{dest}: exists and is not a folder")
    fetched = skipped = 0
    for m in chosen:
        path = os.path.join(dest, *m["file"].split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(os.path.dirname(path)), ".part-*")):
            os.unlink(stale)  # left by an interrupted download
        if os.path.isfile(path) and file_sha256(path) == (m["size"], m["sha256"]):
            skipped += 1
            _say(log, f"{m['attribute']}: {m['file']} already verified, skipped")
            continue
        exp.download_verified(exp.key("final", m["file"]), m["sha256"], m["size"], path)
        fetched += 1
        _say(log, f"{m['attribute']}: {m['file']} ({m['size']} bytes) downloaded and verified")
    out = dict(manifest, models=chosen, source={"store": exp.store.uri, "experiment": exp.experiment})
    atomic_write(os.path.join(dest, MANIFEST), json.dumps(out, indent=1, sort_keys=True).encode())
    _say(log, f"{len(chosen)} classifiers in {dest} ({fetched} downloaded, {skipped} already there)")
    return out


def _say(log, text: str) -> None:
    if log is not None:
        print(text, file=log)


# -- load and predict ---------------------------------------------------------------------------
def read_manifest(models_dir: str) -> dict:
    if not os.path.isdir(models_dir):
        raise AALError(f"{models_dir}: no such folder (fetch the models with `aal-k8s download --to DIR`)")
    path = os.path.join(models_dir, MANIFEST)
    if not os.path.isfile(path):
        raise AALError(f"{path}: not found; is {models_dir} a folder made by `aal-k8s download`?")
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise AALError(f"{path}: cannot read the manifest ({type(e).__name__})") from None
    return _check_manifest(manifest, path)


def _classifier(backbone: str):
    from torch import nn

    from aal_k8s.model import build_backbone

    class Classifier(nn.Module):
        """One attribute: the backbone and a [1, D] linear head; ``forward`` gives logits [B]."""

        def __init__(self):
            super().__init__()
            self.backbone = build_backbone(backbone, "none")
            self.head = nn.Linear(self.backbone.out_dim, 1)

        def forward(self, x):
            return self.head(self.backbone(x)).squeeze(1)

    return Classifier()


def load_classifiers(models_dir: str, attrs: list[str] | None = None, device: str = "cpu"):
    """``(manifest, [(entry, module), ...])``: every selected file verified, strictly loaded."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest = read_manifest(models_dir)
    chosen = select_models(manifest, attrs, os.path.join(models_dir, MANIFEST))
    out = []
    for m in chosen:
        path = os.path.join(models_dir, *m["file"].split("/"))
        if not os.path.isfile(path):
            raise AALError(f"{path}: model file missing (run `aal-k8s download` again to fetch it)")
        check_file(path, path, m["sha256"], m["size"])
        try:
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise StoreError(f"{path}: not a readable safetensors file ({e})") from None
        net = _classifier(manifest["backbone"])
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())[:300]
            raise AALError(f"{path}: weights do not fit backbone {manifest['backbone']!r}: {detail}") from None
        out.append((m, net.to(device).eval()))
    return manifest, out


def find_images(inputs: list[str]) -> list[str]:
    """Image files named directly, or found (sorted, not recursive) in named folders."""
    found = []
    for p in inputs:
        if os.path.isdir(p):
            files = sorted(
                os.path.join(p, f)
                for f in os.listdir(p)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(p, f))
            )
            if not files:
                raise AALError(f"{p}: no images in this folder ({', '.join(IMAGE_EXTENSIONS)})")
            found += files
        elif os.path.isfile(p):
            found.append(p)
        else:
            raise AALError(f"{p}: no such file or folder")
    return found


def preprocess(paths: list[str], manifest: dict, device: str = "cpu"):
    """Model inputs [N, 3, S, S] for image files, exactly as the models' training evaluated them:
    decoded by the dataset's decoder (``aal_k8s.data.common.read_image``), resized first to the
    dataset's decoding size where its loader does that (Duke), then through the evaluation
    transform (``aal_k8s.data.pipeline.model_inputs``: bilinear resize to the input size,
    normalisation with the manifest's mean/std). ``manifest``: a checked final model set manifest."""
    import torch

    from aal_k8s.data import decode_size
    from aal_k8s.data.common import read_image, resize_decoded
    from aal_k8s.data.pipeline import model_inputs

    inp = manifest["input"]
    first = decode_size(manifest["dataset"])
    out = []
    for path in paths:
        img = read_image(path, any_format=True)  # unreadable: a one-line DatasetError naming the file
        if first is not None and tuple(img.shape[1:]) != first:
            img = resize_decoded(img, first)
        # one image at a time: sizes differ, and the result does not depend on the batch
        out.append(model_inputs(img[None], int(inp["image_size"]), inp["mean"], inp["std"], device))
    return torch.cat(out)


def predict(models_dir: str, inputs: list[str], attrs: list[str] | None = None, device: str = "cpu",
            threshold: float | None = None, batch_size: int = 64) -> dict:  # fmt: skip
    """Per image and attribute: probability (sigmoid of the logit) and decision (p >= threshold)."""
    import torch

    images = find_images(inputs)
    manifest, nets = load_classifiers(models_dir, attrs, device)
    if threshold is None:
        threshold = float(manifest.get("output", {}).get("threshold", 0.5))
    rows = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            names = images[start : start + batch_size]
            x = preprocess(names, manifest, device)
            probs = {m["attribute"]: torch.sigmoid(net(x)).double().cpu().tolist() for m, net in nets}
            for i, name in enumerate(names):
                rows.append(
                    {
                        "image": name,
                        "attributes": {
                            a: {"probability": p[i], "decision": p[i] >= threshold} for a, p in probs.items()
                        },
                    }
                )
    return {"models": os.path.abspath(models_dir), "threshold": threshold,
            "attributes": [m["attribute"] for m, _ in nets], "predictions": rows}  # fmt: skip


def format_table(result: dict) -> str:
    attrs = result["attributes"]
    img_w = max([5, *(len(r["image"]) for r in result["predictions"])])
    widths = [max(len(a), 9) for a in attrs]
    lines = ["  ".join([f"{'image':<{img_w}}", *(f"{a:>{w}}" for a, w in zip(attrs, widths))])]
    for r in result["predictions"]:
        cells = []
        for a, w in zip(attrs, widths):
            v = r["attributes"][a]
            cells.append(f"{v['probability']:.3f} {'yes' if v['decision'] else 'no':>3}".rjust(w))
        lines.append("  ".join([f"{r['image']:<{img_w}}", *cells]))
    lines.append(f"(probability, decision at threshold {result['threshold']:g})")
    return "\n".join(lines) + "\n"


def format_csv(result: dict) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "attribute", "probability", "decision"])
    for r in result["predictions"]:
        for a in result["attributes"]:
            v = r["attributes"][a]
            w.writerow([r["image"], a, f"{v['probability']:.6f}", int(v["decision"])])
    return buf.getvalue()

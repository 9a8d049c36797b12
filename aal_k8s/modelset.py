"""The final model set outside the store: download it (verified, atomic, resumable), load it,
and predict attributes of images with it.

A downloaded folder looks like the store's ``final/``::

    DIR/manifest.json                   written last: a folder with a manifest is complete
    DIR/models/<attribute>.safetensors  backbone.* + head.weight [1, D] + head.bias [1]

Every file is checked against the manifest's size and sha256 when downloaded and again when
loaded, and the manifest against its own ``manifest_sha256`` (the store's when downloading, the
local copy's, re-sealed after the download, when loading): an edited mean, std or threshold is
refused, never used. Only safetensors and JSON are read; nothing is unpickled.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

from aal_k8s.checksums import check_file, file_sha256, seal, unseal
from aal_k8s.data import DATASETS
from aal_k8s.errors import AALError, StageOrderError, StoreError
from aal_k8s.store import ExperimentStore
from aal_k8s.store.base import atomic_write

MANIFEST = "manifest.json"
MANIFEST_SHA = "manifest_sha256"  # the manifest's checksum of itself (aal_k8s.checksums.seal)
MODELS = "models"  # the folder of the model files, in the store's final/ and in a download
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
        f = m["file"]
        if not isinstance(f, str) or "\\" in f or "\0" in f or f.startswith("/"):
            raise AALError(f"{where}: model file {f!r} is not a relative path inside the model set")
        parts = f.split("/")
        if ".." in parts:
            raise AALError(f"{where}: model file {f!r} points outside the model set")
        if len(parts) != 2 or parts[0] != MODELS or parts[1] in ("", ".") or not parts[1].endswith(".safetensors"):
            raise AALError(f"{where}: model file {f!r} is not of the form {MODELS}/NAME.safetensors")
        a = m["attribute"]
        if not isinstance(a, str) or not a or a in (".", "..") or any(c in a for c in "/\\\0"):
            raise AALError(f"{where}: attribute {a!r} is not a plain name")
        if not isinstance(m["sha256"], str) or isinstance(m["size"], bool) or not isinstance(m["size"], int):
            raise AALError(f"{where}: model file {f!r} has no valid size and sha256")
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
    sealed = exp.get_sealed("final", MANIFEST, field=MANIFEST_SHA, what="final model set manifest")
    # the same checks as loading, before anything is written: a model file such as "../x" would
    # otherwise be fetched from outside final/models/ of the store
    manifest = _check_manifest(sealed, where)
    chosen = select_models(manifest, attrs, where)
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise AALError(f"{dest}: exists and is not a folder")
    fetched = skipped = 0
    local = []
    for m in chosen:
        # the store names files by content; a downloaded set names them by attribute
        local.append(dict(m, file=f"{MODELS}/{m['attribute']}.safetensors"))
        path = os.path.join(dest, MODELS, f"{m['attribute']}.safetensors")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(os.path.dirname(path)), ".part-*")):
            os.unlink(stale)  # left by an interrupted download
        if os.path.isfile(path) and file_sha256(path) == (m["size"], m["sha256"]):
            skipped += 1
            _say(log, f"{m['attribute']}: {local[-1]['file']} already verified, skipped")
            continue
        exp.download_verified(exp.key("final", m["file"]), m["sha256"], m["size"], path)
        fetched += 1
        _say(log, f"{m['attribute']}: {local[-1]['file']} ({m['size']} bytes) downloaded and verified")
    _download_card(exp, dest, len(manifest["models"]), len(chosen), log)
    out = seal(dict(manifest, models=local, source={"store": exp.store.uri, "experiment": exp.experiment}), MANIFEST_SHA)
    atomic_write(os.path.join(dest, MANIFEST), json.dumps(out, indent=1, sort_keys=True).encode())
    _say(log, f"{len(chosen)} classifiers in {dest} ({fetched} downloaded, {skipped} already there)")
    return out


def _download_card(exp: ExperimentStore, dest: str, n_set: int, n_chosen: int, log) -> None:
    """Copy ``final/MODEL_CARD.md`` beside the classifiers (before the manifest, which marks a
    complete download). The card is written after the manifest by `aal-k8s final` and carries no
    checksum of its own, so it is copied as stored; a set made before cards existed has none."""
    from aal_k8s.modelcard import CARD_NAME

    key = exp.key("final", CARD_NAME)
    path = os.path.join(dest, CARD_NAME)
    if not exp.store.exists(key):
        if os.path.exists(path):
            os.unlink(path)  # a card of another set must not sit beside these classifiers
        _say(log, f"{CARD_NAME}: none in {exp.store.url(exp.key('final'))} (run `aal-k8s final` again to write one)")
        return
    atomic_write(path, exp.store.get_bytes(key))
    scope = f" (it describes all {n_set} classifiers of the set)" if n_chosen < n_set else ""
    _say(log, f"{CARD_NAME}: model card downloaded{scope}")


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
            raw = f.read()
    except OSError as e:
        raise AALError(f"{path}: cannot read the manifest ({type(e).__name__})") from None
    manifest = unseal(raw, MANIFEST_SHA, path, "model set manifest")
    manifest.pop(MANIFEST_SHA)
    return _check_manifest(manifest, path)


def _classifier(backbone: str):
    from aal_k8s.model import Classifier

    return Classifier(backbone)


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


def find_images(inputs: list[str], skipped: list[str] | None = None) -> list[str]:
    """Image files named directly, or found in named folders and their subfolders (sorted by
    path); ``skipped`` receives the other files found in those folders."""
    found = []
    for p in inputs:
        if os.path.isdir(p):
            files, others = [], []
            for folder, dirs, names in os.walk(p):
                dirs.sort()
                for f in sorted(names):
                    (files if f.lower().endswith(IMAGE_EXTENSIONS) else others).append(os.path.join(folder, f))
            files.sort()
            if not files:
                raise AALError(f"{p}: no images in this folder or below ({', '.join(IMAGE_EXTENSIONS)})")
            found += files
            if skipped is not None:
                skipped += others
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
    from aal_k8s.data.common import read_image

    # unreadable: a one-line DatasetError naming the file
    return preprocess_decoded([read_image(path, any_format=True) for path in paths], manifest, device)


def preprocess_decoded(images, manifest: dict, device: str = "cpu"):
    """``preprocess`` for images already decoded: uint8 tensors ``[3, H, W]`` (RGB)."""
    import torch

    from aal_k8s.data import decode_size
    from aal_k8s.data.common import resize_decoded
    from aal_k8s.data.pipeline import model_inputs

    inp = manifest["input"]
    first = decode_size(manifest["dataset"])
    out = []
    for img in images:
        if first is not None and tuple(img.shape[1:]) != first:
            img = resize_decoded(img, first)
        # one image at a time: sizes differ, and the result does not depend on the batch
        out.append(model_inputs(img[None], int(inp["image_size"]), inp["mean"], inp["std"], device))
    # channels_last as training's evaluation batches are: a batch of one has ambiguous strides, so
    # torch.cat of them came out NCHW or NHWC depending on how the pixels were laid out (decoded
    # files vs a stacked uint8 batch), and the convolutions then round differently on some CPUs
    return torch.cat(out).contiguous(memory_format=torch.channels_last)


def predict(models_dir: str, inputs: list[str], attrs: list[str] | None = None, device: str = "cpu",
            threshold: float | None = None, batch_size: int = 64) -> dict:  # fmt: skip
    """Per image and attribute: probability (sigmoid of the logit) and decision (p >= threshold)."""
    import torch

    skipped: list[str] = []
    images = find_images(inputs, skipped)
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
            "attributes": [m["attribute"] for m, _ in nets], "predictions": rows, "skipped": skipped}  # fmt: skip


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


# -- the Python API: aal_k8s.load_model_set ---------------------------------------------------------


@dataclass
class Predictions:
    """``probabilities[i, j]``: P(attribute j | image i); ``decisions``: probabilities >= threshold."""

    attributes: list[str]
    probabilities: "torch.Tensor"  # float64 [N, A], on the CPU
    decisions: "torch.Tensor"  # bool [N, A]
    threshold: float

    def as_dicts(self) -> list[dict[str, dict]]:
        """Per image: attribute -> {"probability", "decision"} (what ``aal-k8s predict`` prints)."""
        return [
            {a: {"probability": float(p[j]), "decision": bool(d[j])} for j, a in enumerate(self.attributes)}
            for p, d in zip(self.probabilities, self.decisions)
        ]


class ModelSet:
    """A final model set loaded for inference; see ``load_model_set``. Picklable."""

    def __init__(self, manifest: dict, classifiers: dict, device: str = "cpu"):
        self.manifest, self.classifiers, self.device = manifest, classifiers, device

    @property
    def attributes(self) -> list[str]:
        return list(self.classifiers)

    def inputs(self, images) -> "torch.Tensor":
        """Model inputs ``[N, 3, S, S]`` through the one shared preprocessing (``preprocess``):
        a path or a list of paths, PIL images, or a uint8 tensor ``[N, 3, H, W]`` / ``[3, H, W]``
        of RGB pixels. A float tensor is taken as model inputs already (normalised, S x S)."""
        import numpy as np
        import torch

        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8:
                return images.to(self.device)
            batch = images[None] if images.dim() == 3 else images
            return preprocess_decoded(list(batch), self.manifest, self.device)
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if all(isinstance(x, (str, os.PathLike)) for x in items):
            return preprocess([os.fspath(x) for x in items], self.manifest, self.device)
        decoded = []
        for x in items:
            if not hasattr(x, "convert"):
                raise AALError(f"predict: expected image paths, PIL images or a tensor, got {type(x).__name__}")
            decoded.append(torch.from_numpy(np.asarray(x.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1))
        return preprocess_decoded(decoded, self.manifest, self.device)

    def predict(self, images, threshold: float | None = None, batch_size: int = 64) -> Predictions:
        import torch

        if threshold is None:
            threshold = float(self.manifest.get("output", {}).get("threshold", 0.5))
        x = self.inputs(images)
        probs = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size]
                probs.append(torch.stack([torch.sigmoid(net(xb)) for net in self.classifiers.values()], 1).double().cpu())
        p = torch.cat(probs) if probs else torch.zeros(0, len(self.classifiers), dtype=torch.float64)
        return Predictions(self.attributes, p, p >= threshold, threshold)


def load_model_set(path_or_uri: str, attrs: list[str] | None = None, device: str = "cpu", cache_dir: str | None = None) -> ModelSet:
    """A final model set, ready to ``predict``: a folder made by ``aal-k8s download``, or an
    experiment in a store (``s3://bucket/prefix/<experiment>``, ``/path/store/<experiment>``),
    which is downloaded (verified, resumable) into ``cache_dir`` (default ``~/.cache/aal-k8s/models``)
    first. ``attrs``: only these attributes."""
    import hashlib

    from aal_k8s.store import open_store

    path = os.path.expanduser(path_or_uri)
    if not os.path.isfile(os.path.join(path, MANIFEST)):
        root, _, experiment = path_or_uri.rstrip("/").rpartition("/")
        if not root or not experiment:
            raise AALError(f"{path_or_uri}: neither a downloaded model set nor <store>/<experiment>")
        exp = ExperimentStore(open_store(root), experiment)
        cache = cache_dir or os.path.join(os.path.expanduser("~/.cache/aal-k8s"), "models")
        path = os.path.join(cache, hashlib.sha256(path_or_uri.encode()).hexdigest()[:16])
        download_final(exp, path, attrs)
    manifest, nets = load_classifiers(path, attrs, device)
    return ModelSet(manifest, {m["attribute"]: net for m, net in nets}, device)

"""Build the final model set: one stand-alone classifier per attribute.

For each attribute, the chosen run's best weights are cut down to the backbone plus that
attribute's head row and stored as ``final/models/<attribute>-<sha256[:16]>.safetensors``;
``final/manifest.json`` lists, per attribute, where it came from (single or adversarial, partner,
lambda), its val and test accuracy, what the model expects as input, and the file's size and
sha256; the manifest carries a sha256 of itself (``manifest_sha256``), so an edited mean, std,
threshold or accuracy is refused by ``download`` and ``predict``. No pickles: safetensors + JSON.

Publication: model files are named by their content, so publishing a new set never rewrites a
file a published manifest points at; the manifest is written (atomically) last. A reader sees the
old set or the new one, never a mix, and a crash while publishing leaves the old set intact.
Model files that neither the new nor the previous manifest names are deleted afterwards (the
previous set's stay, for readers that fetched the old manifest a moment ago).
"""

from __future__ import annotations

import json
import time

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from aal_k8s.checksums import sha256_hex
from aal_k8s.config import Config
from aal_k8s.data import attribute_names, normalisation
from aal_k8s.errors import StageOrderError, StoreError
from aal_k8s.modelset import MANIFEST_SHA, MODELS
from aal_k8s.reduce import ReduceOutput
from aal_k8s.store import ExperimentStore

MANIFEST_VERSION = 2  # 2: manifest_sha256, content-named model files


def classifier_state(run_state: dict, heads: list[str], attribute: str) -> dict:
    """Backbone tensors + the attribute's head as ``head.weight [1, D]`` / ``head.bias [1]``."""
    k = heads.index(attribute)
    state = {k2: v for k2, v in run_state.items() if k2.startswith("backbone.")}
    state["head.weight"] = run_state["head_weight"][k : k + 1].clone()
    state["head.bias"] = run_state["head_bias"][k : k + 1].clone()
    return state


def input_spec(cfg: Config) -> dict:
    """The manifest's ``input``: what ``aal_k8s.modelset.preprocess`` needs to feed the models
    what their evaluation in training fed them."""
    mean, std = normalisation(cfg.dataset.name)
    return {
        "image_size": cfg.dataset.synthetic.image_size if cfg.dataset.name == "synthetic" else cfg.model.image_size,
        "channels": "RGB",
        "resize": "bilinear",  # the image is resized to image_size x image_size
        "layout": "NCHW",
        "scale": "pixels / 255",
        "mean": list(mean),
        "std": list(std),
    }


def build_final(exp: ExperimentStore, cfg: Config, out: ReduceOutput) -> dict:
    if len(out.final) != len(out.attributes):
        lacking = [a for a in out.attributes if a not in out.final]
        raise StageOrderError(
            f"experiment {exp.experiment!r}: no final choice yet for {', '.join(lacking)}; "
            "finish the single, pairwise and adversarial stages and run `aal-k8s reduce`"
        )
    names = attribute_names(cfg.dataset.name)
    entries = []
    cache: dict[str, dict] = {}
    for a in out.attributes:
        c = out.final[a]
        if c.run_id not in cache:
            cache[c.run_id] = _run_weights(exp, c.run_id, a)
        run = cache[c.run_id]
        try:
            state = classifier_state(run["state"], run["heads"], a)
        except (KeyError, ValueError, TypeError):
            raise StoreError(f"run {c.run_id}: its best weights lack the head of {a!r}") from None
        data = save_safetensors(
            state,
            # one metadata entry: safetensors keeps metadata in a hash map, so with several
            # entries the header (and the file's sha256) would change from one save to the next
            metadata={"aal_k8s": json.dumps({"attribute": a, "run_id": c.run_id}, sort_keys=True)},
        )
        key = f"final/{MODELS}/{a}-{sha256_hex(data)[:16]}.safetensors"
        # content-named: a file already there under this name holds (or, if damaged, regains)
        # these very bytes, so rewriting it never changes what a published manifest points at
        exp.store.put_bytes(exp.key(key), data)
        entries.append(
            {
                "attribute": a,
                "index": names.index(a) + 1,
                "source": c.source,
                "partner": c.partner,
                "lambda": c.lam,
                "val_acc": c.val,
                "test_acc": c.test,
                "run_id": c.run_id,
                "file": key.removeprefix("final/"),
                "size": len(data),
                "sha256": sha256_hex(data),
            }
        )
    manifest = {
        "version": MANIFEST_VERSION,
        "experiment": exp.experiment,
        "dataset": cfg.dataset.name,
        "backbone": cfg.model.backbone,
        "input": input_spec(cfg),
        "format": "safetensors",  # backbone.* tensors + head.weight [1, D] + head.bias [1]
        "output": {
            "logit": "head.weight @ backbone(x) + head.bias",
            "probability": "sigmoid(logit)",
            "threshold": 0.5,
        },
        "final_selection": cfg.adversarial.final_selection,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": entries,
    }
    try:
        previous = exp.get_sealed("final", "manifest.json", field=MANIFEST_SHA, what="final model set manifest")
    except StoreError:
        previous = None  # unreadable: nobody can be reading from it
    manifest = exp.put_sealed("final", "manifest.json", obj=manifest, field=MANIFEST_SHA)
    keep = {m["file"] for m in manifest["models"]}
    keep |= {m.get("file") for m in (previous or {}).get("models", []) if isinstance(m, dict)}
    for k in exp.store.list(exp.key("final", MODELS)):
        if k.removeprefix(exp.key("final") + "/") not in keep:
            exp.store.delete(k)
    return manifest


def _run_weights(exp: ExperimentStore, run_id: str, attribute: str) -> dict:
    """``{"heads", "state"}`` of a committed run's verified best weights; a one-line error naming
    the run when it is not committed or its file is not safetensors."""
    record = exp.read_metrics(run_id)
    if record is None:
        raise StageOrderError(
            f"run {run_id} (the final choice for {attribute!r}) is not committed in "
            f"{exp.store.url(exp.key('runs'))}: run its stage, then `aal-k8s reduce` again"
        )
    blob = exp.read_artifact(run_id, "best.safetensors")
    try:
        state = load_safetensors(blob)
    except (SafetensorError, ValueError, OSError) as e:
        detail = " ".join(str(e).split())[:200]
        raise StoreError(f"run {run_id}: best.safetensors is not a safetensors file ({detail})") from None
    heads = record.get("heads")
    if not isinstance(heads, list):
        raise StoreError(f"run {run_id}: its commit record lists no heads")
    return {"heads": heads, "state": state}

"""Build the final model set: one stand-alone classifier per attribute.

For each attribute, the chosen run's best weights are cut down to the backbone plus that
attribute's head row and stored as ``final/models/<attribute>.safetensors``; ``final/manifest.json``
lists, per attribute, where it came from (single or adversarial, partner, lambda), its val and test
accuracy, what the model expects as input, and the file's sha256. No pickles: safetensors + JSON.
"""

from __future__ import annotations

import json
import time

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from aal_k8s.config import Config
from aal_k8s.data import attribute_names, normalisation
from aal_k8s.errors import StageOrderError
from aal_k8s.reduce import ReduceOutput
from aal_k8s.store import ExperimentStore, sha256_hex

MANIFEST_VERSION = 1


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
            record = exp.read_metrics(c.run_id)
            cache[c.run_id] = {
                "heads": record["heads"],
                "state": load_safetensors(exp.read_artifact(c.run_id, "best.safetensors")),
            }
        run = cache[c.run_id]
        data = save_safetensors(
            classifier_state(run["state"], run["heads"], a),
            # one metadata entry: safetensors keeps metadata in a hash map, so with several
            # entries the header (and the file's sha256) would change from one save to the next
            metadata={"aal_k8s": json.dumps({"attribute": a, "run_id": c.run_id}, sort_keys=True)},
        )
        key = f"final/models/{a}.safetensors"
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
    exp.put_json("final", "manifest.json", obj=manifest)
    return manifest

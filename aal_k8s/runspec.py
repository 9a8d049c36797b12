"""RunSpec: everything one training run needs, with a deterministic short run id.

A run is fully described by its spec (the worker needs nothing else but the store), so the same
spec always maps to the same id, and a re-submitted stage finds its finished runs by id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

# The stage lists live with the stages (aal_k8s.stages); STAGES and ABLATION_STAGES are re-exported
# for the report, which has always read them here.
from aal_k8s.stages import ABLATION_STAGES, ALL_ATTRIBUTE_STAGES, STAGES  # noqa: F401
from aal_k8s.stages import tag as stage_tag

#: The run identity: what a run id hashes. A run's id must change exactly when its result would,
#: and never because the code grew: every committed run of every store is found by its id, so an id
#: that moves orphans the run and it is trained again. Version 1 is the identity of every id made so
#: far; changing what an existing key means (or these lists) needs RUN_ID_VERSION 2, which is then
#: hashed into every new id.
RUN_ID_VERSION = 1
#: Version 1's config keys, hashed always (with the stage, attributes, mode, lambda, seed, options).
RESULT_KEYS_V1 = {
    "dataset": ("name", "seed", "val_fraction", "strict_counts", "synthetic", "augment"),
    "dataset.synthetic": ("n_train", "n_val", "n_test", "image_size", "label_noise", "agreement"),
    "dataset.augment": ("crop", "flip"),
    "model": ("backbone", "pretrained", "image_size"),
    "train": ("lr", "weight_decay", "epochs", "lr_decay_epoch", "lr_decay_factor", "batch_size", "seed", "precision"),
}
#: Config keys that change how fast a run goes, or where the same images are read from, not what it
#: computes: never in the id.
EXECUTION_ONLY = (
    "train.device", "train.threads", "train.eval_batch_size", "train.heads_impl", "train.compile",
    "dataset.root", "dataset.pack", "dataset.cache_dir", "dataset.pack_to", "dataset.workers",
)  # fmt: skip
#: Version 1's RunSpec fields (the experiment name is not one: a copied experiment keeps its ids).
_SPEC_KEYS_V1 = ("stage", "dataset", "primary", "auxiliary", "mode", "lam", "seed", "attr_index")
#: The config sections a RunSpec carries (the worker trains with them).
RUN_SECTIONS = ("dataset", "model", "train")


def config_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's resolved config sections that its id hashes.

    Version 1's keys always; a key added since (any key not listed, not execution-only) only when
    its value differs from its default, so adding a config field with a default changes no id, and
    setting it to anything else gives new ids. Defaults are the config dataclasses' own (no preset)."""
    from aal_k8s.config import Config

    defaults = Config().to_dict()
    return {s: _identity_of(config.get(s, {}), defaults.get(s, {}), s) for s in sorted(config)}


def _identity_of(section: dict, defaults: dict, path: str) -> dict:
    out = {}
    pinned = RESULT_KEYS_V1.get(path, ())
    for k, v in section.items():
        key = f"{path}.{k}"
        if key in EXECUTION_ONLY:
            continue
        if isinstance(v, dict) and key in RESULT_KEYS_V1:
            out[k] = _identity_of(v, defaults.get(k, {}) if isinstance(defaults.get(k), dict) else {}, key)
        elif k in pinned or k not in defaults or v != defaults[k]:
            out[k] = v
    return out


@dataclass(frozen=True)
class RunSpec:
    experiment: str
    stage: str  # one of aal_k8s.stages.STAGES
    dataset: str
    primary: tuple[str, ...]  # attributes whose heads are trained and selected on
    auxiliary: tuple[str, ...] = ()  # adversarial heads behind gradient reversal
    mode: str = "single"  # one of aal_k8s.modes.MODE_OPTIONS
    lam: float = 0.0  # gradient reversal weight (adversarial mode only)
    seed: int = 0
    attr_index: tuple[int, ...] = ()  # 1-based dataset indices of primary + auxiliary, for names
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # ^ the resolved dataset/model/train config sections the worker trains with
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # ^ the mode's typed options serialised (aal_k8s.modes: lambda schedule, WGAN clip, hidden
    #   layers, affinity every/window/measure_on); in the id, so never a different dict
    init_from: str = ""  # run id whose best weights initialise the backbone (shared mode: the multi run)

    @property
    def heads(self) -> list[str]:
        return list(self.primary) + list(self.auxiliary)

    @property
    def run_id(self) -> str:
        ident = {k: getattr(self, k) for k in _SPEC_KEYS_V1}
        for k in ("options", "init_from"):  # added later: absent when empty, so older ids stay valid
            if getattr(self, k):
                ident[k] = getattr(self, k)
        ident["config"] = config_identity(self.config)
        if RUN_ID_VERSION != 1:
            ident["id_version"] = RUN_ID_VERSION
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
        idx = self.attr_index
        n_p = len(self.primary)
        if self.stage in ALL_ATTRIBUTE_STAGES or len(idx) > 4:
            names = [f"k{len(idx)}"]
        else:
            names = [f"a{i:02d}" for i in idx[:n_p]] + [f"x{i:02d}" for i in idx[n_p:]]
        return "-".join([stage_tag(self.stage), *names, digest])

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        d = dict(d)
        for k in ("primary", "auxiliary", "attr_index"):
            d[k] = tuple(d.get(k, ()))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        s = f"{self.run_id}: {self.stage} {'+'.join(self.primary)}"
        if self.auxiliary:
            s += f" vs {'+'.join(self.auxiliary)} (lambda={self.lam:g})"
        return s

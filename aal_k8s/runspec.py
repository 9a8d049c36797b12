"""RunSpec: everything one training run needs, with a deterministic short run id.

A run is fully described by its spec (the worker needs nothing else but the store), so the same
spec always maps to the same id, and a re-submitted stage finds its finished runs by id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

#: Stages that find partners (planned from the config alone, before any reduce).
DISCOVERY_STAGES = ("single", "pairwise", "multi", "affinity")
#: Stages whose one run trains every attribute of the dataset.
ALL_ATTRIBUTE_STAGES = ("multi", "affinity")
#: The paper's ablations (Table 1): one run per attribute with a partner, at the lambda chosen for
#: its gradient-reversal run.
ABLATION_STAGES = ("gan", "wgan", "shared", "group")
#: Every stage, in protocol order: discovery, reduce, adversarial, reduce, ablations.
STAGES = (*DISCOVERY_STAGES, "adversarial", *ABLATION_STAGES)
# single: one head; multi: several heads sharing the backbone; adversarial: gradient reversal
# (eq. 6/10/11); gan: alternating GAN objective (eq. 4/5); wgan: Wasserstein critic as the auxiliary
# head; shared: gradient reversal on hidden layers over a frozen multi-task CNN; affinity: multi plus
# lookahead inter-task affinity measurements.
MODES = ("single", "multi", "adversarial", "gan", "wgan", "shared", "affinity")
ADVERSARIAL_MODES = ("adversarial", "gan", "wgan", "shared")  # modes with auxiliary heads and a lambda
_STAGE_TAG = {"single": "sin", "pairwise": "pair", "multi": "mul", "adversarial": "adv", "affinity": "aff"}

# Config keys that change how fast a run goes, not what it computes: kept out of the run id.
_EXECUTION_ONLY = {
    "train": ("device", "threads", "eval_batch_size", "heads_impl", "compile"),
    "dataset": ("root", "pack", "cache_dir", "workers"),  # where the same images are read from
}


@dataclass(frozen=True)
class RunSpec:
    experiment: str
    stage: str  # one of STAGES
    dataset: str
    primary: tuple[str, ...]  # attributes whose heads are trained and selected on
    auxiliary: tuple[str, ...] = ()  # adversarial heads behind gradient reversal
    mode: str = "single"  # one of MODES
    lam: float = 0.0  # gradient reversal weight (adversarial mode only)
    seed: int = 0
    attr_index: tuple[int, ...] = ()  # 1-based dataset indices of primary + auxiliary, for names
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # ^ the resolved dataset/model/train config sections the worker trains with
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # ^ mode options (lambda schedule, WGAN clip, hidden layers, affinity every/window); in the id
    init_from: str = ""  # run id whose best weights initialise the backbone (shared mode: the multi run)

    @property
    def heads(self) -> list[str]:
        return list(self.primary) + list(self.auxiliary)

    @property
    def run_id(self) -> str:
        ident = {k: v for k, v in asdict(self).items() if k not in ("experiment", "config")}
        for k in ("options", "init_from"):  # added later: absent when empty, so older ids stay valid
            if not ident[k]:
                del ident[k]
        ident["config"] = {
            section: {
                k: v for k, v in self.config.get(section, {}).items() if k not in _EXECUTION_ONLY.get(section, ())
            }
            for section in sorted(self.config)
        }
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
        idx = self.attr_index
        n_p = len(self.primary)
        if self.stage in ALL_ATTRIBUTE_STAGES or len(idx) > 4:
            names = [f"k{len(idx)}"]
        else:
            names = [f"a{i:02d}" for i in idx[:n_p]] + [f"x{i:02d}" for i in idx[n_p:]]
        tag = _STAGE_TAG.get(self.stage, self.stage[:6])
        return "-".join([tag, *names, digest])

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

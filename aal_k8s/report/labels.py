"""What the report calls each ablation row (the paper's Table 1 wording).

One lookup, so that the stage registry can own the labels later: point ``ablation_label`` at it and
nothing else in the report changes. The keys are the paper's Table 1 keys
(``aal_k8s.paper.TABLE1_CELEBA_VAL``): every stage of ``runspec.ABLATION_STAGES`` plus the three
rows that are not ablation stages (single, multi_all, adversarial).
"""

from __future__ import annotations

_LABELS = {
    "single": "Single task per attribute",
    "multi_all": "Multi-task with all attributes",
    "adversarial": "Pairwise adversarial (gradient reversal)",
    "gan": "Pairwise adversarial with GAN loss",
    "wgan": "Pairwise adversarial with Wasserstein-GAN loss",
    "shared": "Pairwise adversarial with shared CNN representation",
    "group": "Multiple adversarial attributes",
}


def ablation_label(key: str) -> str:
    """The Table 1 row label of ``key`` (a stage name or single / multi_all / adversarial)."""
    return _LABELS[key]

"""What the report calls each ablation row (the paper's Table 1 wording): the stage registry's
``Stage.label`` under its ``table1_key`` (``aal_k8s.stages.TABLE1_LABELS``), so a new ablation
brings its own row label."""

from __future__ import annotations

from aal_k8s.stages import TABLE1_LABELS


def ablation_label(key: str) -> str:
    """The Table 1 row label of ``key`` (a stage's ``table1_key``: single, multi_all, adversarial, gan...)."""
    return TABLE1_LABELS[key]

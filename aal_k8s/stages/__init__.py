"""The protocol's stages, one module each, registered here in protocol order.

Adding a stage (say a new ablation) is one module with a ``STAGE`` (``aal_k8s.stages.base.Stage``)
and one line in ``REGISTRY``; a new objective also needs its mode (``aal_k8s.modes`` for the
options, ``aal_k8s.train.modes`` for the objective and hooks). Everything else (the stage lists,
run-id tags, the planner, the CLI's choices, the pipeline's phases, reduce, the Kubernetes labels)
reads this registry.
"""

from __future__ import annotations

from aal_k8s.errors import AALError
from aal_k8s.stages import adversarial, affinity, gan, group, multi, pairwise, seeds, shared, single, wgan
from aal_k8s.stages.base import ABLATION, ADVERSARIAL, DISCOVERY, PHASES, PlanInputs, Stage

#: Every stage, in protocol order: discovery, reduce, adversarial, reduce, ablations.
REGISTRY: tuple[Stage, ...] = tuple(
    m.STAGE for m in (single, pairwise, multi, affinity, adversarial, gan, wgan, shared, group, seeds)
)
BY_NAME: dict[str, Stage] = {s.name: s for s in REGISTRY}

STAGES = tuple(s.name for s in REGISTRY)
#: Stages that find partners (planned from the config alone, before any reduce).
DISCOVERY_STAGES = tuple(s.name for s in REGISTRY if s.phase == DISCOVERY)
#: The stages of the adversarial phase (after the first reduce).
ADVERSARIAL_STAGES = tuple(s.name for s in REGISTRY if s.phase == ADVERSARIAL)
#: The paper's ablations (Table 1): after the adversarial stage's lambdas are chosen.
ABLATION_STAGES = tuple(s.name for s in REGISTRY if s.phase == ABLATION)
#: Stages whose one run trains every attribute of the dataset.
ALL_ATTRIBUTE_STAGES = tuple(s.name for s in REGISTRY if s.all_attributes)
#: ``aal-k8s pipeline``'s default: the paper's protocol.
PAPER_STAGES = tuple(s.name for s in REGISTRY if s.paper_protocol)
#: Modes with auxiliary heads and a lambda: those of the adversarial and ablation stages.
ADVERSARIAL_MODES = tuple(dict.fromkeys(s.mode for s in REGISTRY if s.phase != DISCOVERY))
#: The report's Table 1 rows, in the paper's order: row id -> label.
TABLE1_LABELS = {s.table1_key: s.label for s in REGISTRY if s.table1_key}


def get(name: str) -> Stage:
    """The stage called ``name``; an unknown name is one line listing the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise AALError(f"unknown stage {name!r} (known: {', '.join(STAGES)})") from None


def tag(name: str) -> str:
    """The run-id prefix of stage ``name`` (an unregistered name: its first six letters, as ever)."""
    return BY_NAME[name].tag if name in BY_NAME else name[:6]


__all__ = [
    "ABLATION_STAGES", "ADVERSARIAL_MODES", "ADVERSARIAL_STAGES", "ALL_ATTRIBUTE_STAGES", "BY_NAME",
    "DISCOVERY_STAGES", "PAPER_STAGES", "PHASES", "REGISTRY", "STAGES", "TABLE1_LABELS", "PlanInputs",
    "Stage", "get", "tag",
]  # fmt: skip

"""single: one run per attribute, one head each (the single-task baseline)."""

from aal_k8s.modes import Options
from aal_k8s.stages.base import DISCOVERY, PlanInputs, Stage


def plan(inputs: PlanInputs):
    return [inputs.spec((a,), options=Options()) for a in inputs.names]


STAGE = Stage(
    name="single", tag="sin", mode="single", phase=DISCOVERY, plan=plan, paper_protocol=True,
    table1_key="single", label="Single task per attribute", summary="M runs, one attribute each",
)  # fmt: skip

"""multi: one run over all M attributes (the multi-task baseline; the shared ablation's CNN)."""

from aal_k8s.modes import Options
from aal_k8s.stages.base import DISCOVERY, PlanInputs, Stage


def plan(inputs: PlanInputs):
    return [inputs.spec(tuple(inputs.all_names), options=Options())]


STAGE = Stage(
    name="multi", tag="mul", mode="multi", phase=DISCOVERY, plan=plan, all_attributes=True, paper_protocol=True,
    table1_key="multi_all", label="Multi-task with all attributes", summary="one run over all M attributes",
)  # fmt: skip

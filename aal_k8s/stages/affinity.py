"""affinity: one multi-task run over all M attributes that also measures lookahead inter-task
affinity (partners without the pairwise stage; see aal_k8s.affinity)."""

from aal_k8s.modes import AffinityOptions, default_every
from aal_k8s.stages.base import DISCOVERY, PlanInputs, Stage


def plan(inputs: PlanInputs):
    aff = inputs.cfg.affinity
    every = aff.every or default_every(len(inputs.all_names))  # resolved here: the run id holds the number
    options = AffinityOptions(every=every, window=aff.window, measure_on=aff.measure_on)
    return [inputs.spec(tuple(inputs.all_names), options=options)]


STAGE = Stage(
    name="affinity", tag="aff", mode="affinity", phase=DISCOVERY, plan=plan, all_attributes=True,
    summary="one multi-task run over all M attributes measuring lookahead inter-task affinity",
)  # fmt: skip

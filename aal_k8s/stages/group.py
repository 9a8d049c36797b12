"""group: each attribute against every attribute that lowered it in the pairwise stage (the
paper's Table 5, eq. 10/11), at its chosen lambda."""

from aal_k8s.stages.base import ABLATION, GROUPS, LAMBDAS, PARTNERS, PlanInputs, Stage, schedule


def plan(inputs: PlanInputs):
    options = schedule(inputs.cfg)
    return [
        inputs.spec((a,), tuple(inputs.groups[a]), lam=inputs.lambdas[a], options=options)
        for a in inputs.with_partner()
        if inputs.groups.get(a)
    ]


STAGE = Stage(
    name="group", tag="group", mode="adversarial", phase=ABLATION, plan=plan, needs=(PARTNERS, LAMBDAS, GROUPS),
    table1_key="group", label="Multiple adversarial attributes",
    summary="against every negative partner of the pairwise stage (eq. 10/11) at the chosen lambda",
)  # fmt: skip

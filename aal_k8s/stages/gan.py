"""gan: the paper's ablation with the GAN objective (eq. 4/5) instead of gradient reversal, one
run per attribute with a partner at its chosen lambda."""

from aal_k8s.stages.base import ABLATION, LAMBDAS, PARTNERS, PlanInputs, Stage, one_per_partner, schedule


def plan(inputs: PlanInputs):
    return one_per_partner(inputs, schedule(inputs.cfg))


STAGE = Stage(
    name="gan", tag="gan", mode="gan", phase=ABLATION, plan=plan, needs=(PARTNERS, LAMBDAS),
    table1_key="gan", label="Pairwise adversarial with GAN loss", summary="GAN objective (eq. 4/5) at the chosen lambda",
)  # fmt: skip

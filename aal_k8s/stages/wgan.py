"""wgan: the ablation whose auxiliary head is a Wasserstein critic, Lipschitz by weight clipping
(``adversarial.wgan_clip``), one run per attribute with a partner at its chosen lambda."""

from aal_k8s.modes import WganOptions
from aal_k8s.stages.base import ABLATION, LAMBDAS, PARTNERS, PlanInputs, Stage, one_per_partner, schedule_fields


def plan(inputs: PlanInputs):
    return one_per_partner(inputs, WganOptions(**schedule_fields(inputs.cfg), clip=inputs.cfg.adversarial.wgan_clip))


STAGE = Stage(
    name="wgan", tag="wgan", mode="wgan", phase=ABLATION, plan=plan, needs=(PARTNERS, LAMBDAS),
    table1_key="wgan", label="Pairwise adversarial with Wasserstein-GAN loss",
    summary="Wasserstein critic as the auxiliary head at the chosen lambda",
)  # fmt: skip

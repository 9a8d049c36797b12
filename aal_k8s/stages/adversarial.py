"""adversarial: each attribute with a negative partner x every lambda of the grid, the partner's
head behind gradient reversal (eq. 6); attributes without a partner get no run."""

from aal_k8s.stages.base import ADVERSARIAL, PARTNERS, PlanInputs, Stage, schedule


def plan(inputs: PlanInputs):
    options = schedule(inputs.cfg)
    return [
        inputs.spec((a,), (inputs.partners[a],), lam=lam, options=options)
        for a in inputs.with_partner()
        for lam in inputs.cfg.adversarial.lambdas
    ]


STAGE = Stage(
    name="adversarial", tag="adv", mode="adversarial", phase=ADVERSARIAL, plan=plan, needs=(PARTNERS,),
    paper_protocol=True, table1_key="adversarial", label="Pairwise adversarial (gradient reversal)",
    summary="(attributes with a partner) x lambda grid, gradient reversal",
)  # fmt: skip

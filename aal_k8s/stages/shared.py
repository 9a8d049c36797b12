"""shared: the ablation that starts from the multi stage's CNN, frozen, and trains
``adversarial.shared_hidden_layers`` hidden layers on top with gradient reversal, one run per
attribute with a partner at its chosen lambda."""

from aal_k8s.modes import SharedOptions
from aal_k8s.stages.base import ABLATION, LAMBDAS, PARTNERS, PlanInputs, Stage, one_per_partner, schedule_fields


def plan(inputs: PlanInputs):
    options = SharedOptions(**schedule_fields(inputs.cfg), hidden_layers=inputs.cfg.adversarial.shared_hidden_layers)
    return one_per_partner(inputs, options, init_from=inputs.run_of("multi").run_id)


STAGE = Stage(
    name="shared", tag="shared", mode="shared", phase=ABLATION, plan=plan, needs=(PARTNERS, LAMBDAS),
    table1_key="shared", label="Pairwise adversarial with shared CNN representation",
    summary="gradient reversal on hidden layers over the multi run's frozen CNN",
)  # fmt: skip

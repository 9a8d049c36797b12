"""seeds: the final comparison over more seeds (``adversarial.seeds`` N, ``--seeds N``). Each
attribute's single-task baseline and, where validation chose the adversarial run as its final
classifier, that run at the chosen lambda, trained again with seeds train.seed+1 ..
train.seed+N-1, so both sides of the final-vs-single comparison get N seeds; reduce pairs them per
seed (``ReduceOutput.seeds``). An attribute whose final classifier is its single-task run needs
no adversarial replicate: the comparison never reads one. N = 1 (default) plans nothing."""

from dataclasses import replace

from aal_k8s.modes import Options
from aal_k8s.stages.base import FINALS, LAMBDAS, PARTNERS, REPLICATES, PlanInputs, Stage, schedule


def plan(inputs: PlanInputs):
    cfg = inputs.cfg
    options = schedule(cfg)
    out = []
    for k in range(1, cfg.adversarial.seeds):
        seed = cfg.train.seed + k  # spec.seed seeds the weights, the order and the augmentation
        for a in inputs.names:
            out.append(replace(inputs.spec((a,), options=Options()), mode="single", seed=seed))
            if inputs.partners.get(a) and inputs.finals.get(a) == "adversarial":
                adv = inputs.spec((a,), (inputs.partners[a],), lam=inputs.lambdas[a], options=options)
                out.append(replace(adv, seed=seed))
    return out


STAGE = Stage(
    name="seeds", tag="seed", mode="adversarial", phase=REPLICATES, plan=plan, needs=(PARTNERS, LAMBDAS, FINALS),
    summary="(seeds-1) x (M single + the adversarial finals at their lambda), for intervals over seeds",
)  # fmt: skip

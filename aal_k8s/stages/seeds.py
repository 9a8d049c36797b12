"""seeds: the final comparison over more seeds (``adversarial.seeds`` N, ``--seeds N``). Each
attribute's single-task baseline and, where it has a partner, its adversarial run at the chosen
lambda, trained again with seeds train.seed+1 .. train.seed+N-1. The final classifier is one of
those two (which one is known only after reduce), so both sides of the final-vs-single comparison
get N seeds; reduce pairs them per seed (``ReduceOutput.seeds``). N = 1 (default) plans nothing."""

from dataclasses import replace

from aal_k8s.modes import Options
from aal_k8s.stages.base import LAMBDAS, PARTNERS, REPLICATES, PlanInputs, Stage, schedule


def plan(inputs: PlanInputs):
    cfg = inputs.cfg
    options = schedule(cfg)
    out = []
    for k in range(1, cfg.adversarial.seeds):
        seed = cfg.train.seed + k  # spec.seed seeds the weights, the order and the augmentation
        for a in inputs.names:
            out.append(replace(inputs.spec((a,), options=Options()), mode="single", seed=seed))
            if inputs.partners.get(a):
                adv = inputs.spec((a,), (inputs.partners[a],), lam=inputs.lambdas[a], options=options)
                out.append(replace(adv, seed=seed))
    return out


STAGE = Stage(
    name="seeds", tag="seed", mode="adversarial", phase=REPLICATES, plan=plan, needs=(PARTNERS, LAMBDAS),
    summary="(seeds-1) x (M single + the adversarial run at each chosen lambda), for intervals over seeds",
)  # fmt: skip

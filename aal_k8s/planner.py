"""Stage -> RunSpecs.

  single       M runs, one attribute each
  pairwise     M(M-1)/2 two-head runs; one run gives "a trained with b" and "b trained with a"
  multi        one run over all M attributes
  affinity     one multi-task run over all M attributes that also measures lookahead inter-task
               affinity (partners without the pairwise stage; see aal_k8s.affinity)
  adversarial  each attribute with a negative partner x every lambda of the grid
               (partners come from the reduce output; attributes without one get no run)
  gan, wgan,   the paper's ablations (Table 1): one run per attribute with a partner, at the lambda
  shared       chosen on validation for its gradient-reversal run (so after adversarial + reduce);
               shared starts from the multi stage's CNN, frozen
  group        each attribute against every attribute that lowered it in the pairwise stage
               (Table 5), eq. 10/11, at its chosen lambda
"""

from __future__ import annotations

import itertools

from aal_k8s.affinity import default_every
from aal_k8s.config import Config
from aal_k8s.data import attribute_names
from aal_k8s.errors import AALError, StageOrderError
from aal_k8s.runspec import RUN_SECTIONS, STAGES, RunSpec

def job_packs(specs: list[RunSpec], runs_per_job: int) -> list[list[RunSpec]]:
    """The runs of each Kubernetes Job (``executor.runs_per_job``; aal_k8s.packs): the specs
    grouped in run-id order, so that the same runs make the same packs (and Job names) whatever
    order they come in. Callers pass every run of the stage, committed ones too: a pack keeps
    its name after some members committed, so a resubmit finds its Job instead of creating one
    more for the runs still training. 1: one run per Job, in the order given."""
    if runs_per_job <= 1:
        return [[s] for s in specs]
    from aal_k8s.packs import group_packs  # torch: only when packs are asked for

    return group_packs(sorted(specs, key=lambda s: s.run_id), runs_per_job)


#: The stages ``aal-k8s pipeline`` runs by default (the paper's protocol), in order; reduce sits
#: between multi and adversarial, and again after adversarial.
PIPELINE = ("single", "pairwise", "multi", "adversarial")
#: ``aal-k8s pipeline --stages all``: the protocol, partner discovery by affinity, the ablations.
ALL = STAGES


def _spec(cfg: Config, stage: str, primary, auxiliary=(), mode="single", lam=0.0, options=None, init_from="") -> RunSpec:
    names = attribute_names(cfg.dataset.name)
    return RunSpec(
        experiment=cfg.experiment_name,
        stage=stage,
        dataset=cfg.dataset.name,
        primary=tuple(primary),
        auxiliary=tuple(auxiliary),
        mode=mode,
        lam=float(lam),
        seed=cfg.train.seed,
        attr_index=tuple(names.index(a) + 1 for a in (*primary, *auxiliary)),
        config={section: _plain(getattr(cfg, section)) for section in RUN_SECTIONS},
        options=dict(options or {}),
        init_from=init_from,
    )


def _schedule_options(cfg: Config) -> dict:
    """The lambda schedule, only when it is not the paper's constant (so default ids never change)."""
    adv = cfg.adversarial
    if adv.lambda_schedule == "constant":
        return {}
    return {"lambda_schedule": adv.lambda_schedule, "dann_alpha": adv.dann_alpha}


def affinity_every(cfg: Config) -> int:
    """Steps between two affinity measurements (``affinity.every``, 0 = 2 x M)."""
    return cfg.affinity.every or default_every(len(attribute_names(cfg.dataset.name)))


def _plain(section) -> dict:
    from dataclasses import asdict

    return asdict(section)


def plan_stage(
    stage: str,
    cfg: Config,
    partners: dict[str, str | None] | None = None,
    attributes: list[str] | None = None,
    lambdas: dict[str, float] | None = None,
    groups: dict[str, list[str]] | None = None,
) -> list[RunSpec]:
    """The runs of ``stage``. ``attributes`` restricts the per-attribute stages to a subset (multi
    and affinity always train all of them). ``partners`` (from reduce) is required for adversarial
    and the ablations; ``lambdas`` (the lambda chosen per attribute) for the ablations; ``groups``
    (every negative partner per attribute) for group."""
    if stage not in STAGES:
        raise AALError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    all_names = attribute_names(cfg.dataset.name)
    names = attributes or all_names
    if stage == "single":
        return [_spec(cfg, stage, (a,)) for a in names]
    if stage == "pairwise":
        chosen = set(names)
        return [
            _spec(cfg, stage, (a, b), mode="multi")
            for a, b in itertools.combinations(all_names, 2)
            if a in chosen or b in chosen
        ]
    if stage == "multi":
        return [_spec(cfg, stage, tuple(all_names), mode="multi")]
    if stage == "affinity":
        options = {"every": affinity_every(cfg), "window": cfg.affinity.window, "measure_on": cfg.affinity.measure_on}
        return [_spec(cfg, stage, tuple(all_names), mode="affinity", options=options)]
    if partners is None:
        raise StageOrderError(
            f"stage {stage} needs the negative partners of experiment {cfg.experiment_name!r}: "
            f"run the stages that find them ({cfg.adversarial.partners_from}), then `aal-k8s reduce`"
        )
    schedule = _schedule_options(cfg)
    if stage == "adversarial":
        return [
            _spec(cfg, stage, (a,), (partners[a],), mode="adversarial", lam=lam, options=schedule)
            for a in names
            if partners.get(a)
            for lam in cfg.adversarial.lambdas
        ]
    with_partner = [a for a in names if partners.get(a)]
    lacking = [a for a in with_partner if a not in (lambdas or {})]
    if lacking:
        raise StageOrderError(
            f"stage {stage} runs at the lambda chosen for each attribute's adversarial run, and "
            f"experiment {cfg.experiment_name!r} has none yet for {', '.join(lacking)}: "
            "finish the adversarial stage, then `aal-k8s reduce`"
        )
    if stage == "group":
        if groups is None:
            raise StageOrderError(
                f"stage group needs every negative partner from the pairwise stage of experiment "
                f"{cfg.experiment_name!r}: run single and pairwise, then `aal-k8s reduce`"
            )
        return [
            _spec(cfg, stage, (a,), tuple(groups[a]), mode="adversarial", lam=lambdas[a], options=schedule)
            for a in with_partner
            if groups.get(a)
        ]
    options = dict(schedule)
    init_from = ""
    if stage == "wgan":
        options["clip"] = cfg.adversarial.wgan_clip
    if stage == "shared":
        options["hidden_layers"] = cfg.adversarial.shared_hidden_layers
        init_from = plan_stage("multi", cfg)[0].run_id
    return [
        _spec(cfg, stage, (a,), (partners[a],), mode=stage, lam=lambdas[a], options=options, init_from=init_from)
        for a in with_partner
    ]

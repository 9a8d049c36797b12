"""Stage -> RunSpecs: each stage (``aal_k8s.stages``) plans its runs; this module checks it has
what it needs (the reduce outputs of earlier stages) and builds its RunSpecs from the config."""

from __future__ import annotations

from dataclasses import asdict

from aal_k8s import stages
from aal_k8s.config import Config
from aal_k8s.data import attribute_names
from aal_k8s.errors import StageOrderError
from aal_k8s.modes import Options
from aal_k8s.runspec import RUN_SECTIONS, RunSpec
from aal_k8s.stages.base import FINALS, GROUPS, LAMBDAS, PARTNERS, PlanInputs

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
PIPELINE = stages.PAPER_STAGES
#: ``aal-k8s pipeline --stages all``: the protocol, partner discovery by affinity, the ablations.
ALL = stages.STAGES


def _builder(cfg: Config, stage: stages.Stage):
    names = attribute_names(cfg.dataset.name)

    def spec(primary, auxiliary=(), lam=0.0, options: Options | None = None, init_from: str = "") -> RunSpec:
        return RunSpec(
            experiment=cfg.experiment_name,
            stage=stage.name,
            dataset=cfg.dataset.name,
            primary=tuple(primary),
            auxiliary=tuple(auxiliary),
            mode=stage.mode,
            lam=float(lam),
            seed=cfg.train.seed,
            attr_index=tuple(names.index(a) + 1 for a in (*primary, *auxiliary)),
            config={section: asdict(getattr(cfg, section)) for section in RUN_SECTIONS},
            options=(options or Options()).to_dict(),
            init_from=init_from,
        )

    return spec


def _check_needs(stage: stages.Stage, cfg: Config, names, partners, lambdas, groups, finals) -> None:
    """``StageOrderError`` naming what ``stage`` lacks and the stages that make it."""
    exp = cfg.experiment_name
    if PARTNERS in stage.needs and partners is None:
        raise StageOrderError(
            f"stage {stage.name} needs the negative partners of experiment {exp!r}: "
            f"run the stages that find them ({cfg.adversarial.partners_from}), then `aal-k8s reduce`"
        )
    if LAMBDAS in stage.needs:
        lacking = [a for a in names if partners.get(a) and a not in (lambdas or {})]
        if lacking:
            raise StageOrderError(
                f"stage {stage.name} runs at the lambda chosen for each attribute's adversarial run, and "
                f"experiment {exp!r} has none yet for {', '.join(lacking)}: "
                "finish the adversarial stage, then `aal-k8s reduce`"
            )
    if GROUPS in stage.needs and groups is None:
        raise StageOrderError(
            f"stage {stage.name} needs every negative partner from the pairwise stage of experiment "
            f"{exp!r}: run single and pairwise, then `aal-k8s reduce`"
        )
    if FINALS in stage.needs:
        lacking = [a for a in names if a not in (finals or {})]
        if lacking:
            raise StageOrderError(
                f"stage {stage.name} replicates each attribute's final classifier, and experiment {exp!r} "
                f"has none chosen yet for {', '.join(lacking)}: finish the protocol's stages, then `aal-k8s reduce`"
            )


def plan_stage(
    stage: str,
    cfg: Config,
    partners: dict[str, str | None] | None = None,
    attributes: list[str] | None = None,
    lambdas: dict[str, float] | None = None,
    groups: dict[str, list[str]] | None = None,
    finals: dict[str, str] | None = None,
) -> list[RunSpec]:
    """The runs of ``stage``. ``attributes`` restricts the per-attribute stages to a subset (multi
    and affinity always train all of them). ``partners`` (from reduce) is required for adversarial
    and the ablations; ``lambdas`` (the lambda chosen per attribute) for the ablations; ``groups``
    (every negative partner per attribute) for group; ``finals`` (single or adversarial, the final
    classifier validation chose per attribute) for seeds."""
    st = stages.get(stage)
    all_names = attribute_names(cfg.dataset.name)
    names = attributes or all_names
    _check_needs(st, cfg, names, partners, lambdas, groups, finals)
    inputs = PlanInputs(
        cfg=cfg,
        names=list(names),
        all_names=list(all_names),
        partners=partners or {},
        lambdas=lambdas or {},
        groups=groups or {},
        finals=finals or {},
        spec=_builder(cfg, st),
        run_of=lambda name: plan_stage(name, cfg)[0],
    )
    return st.plan(inputs)

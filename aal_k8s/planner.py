"""Stage -> RunSpecs.

  single       M runs, one attribute each
  pairwise     M(M-1)/2 two-head runs; one run gives "a trained with b" and "b trained with a"
  multi        one run over all M attributes
  adversarial  each attribute with a negative partner x every lambda of the grid
               (partners come from the reduce output; attributes without one get no run)
"""

from __future__ import annotations

import itertools

from aal_k8s.config import Config
from aal_k8s.data import attribute_names
from aal_k8s.errors import AALError, StageOrderError
from aal_k8s.runspec import STAGES, RunSpec

#: The stages ``aal-k8s pipeline`` runs, in order; reduce sits between pairwise and adversarial.
PIPELINE = ("single", "pairwise", "multi", "adversarial")


def _spec(cfg: Config, stage: str, primary, auxiliary=(), mode="single", lam=0.0) -> RunSpec:
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
        config={
            "dataset": _plain(cfg.dataset),
            "model": _plain(cfg.model),
            "train": _plain(cfg.train),
        },
    )


def _plain(section) -> dict:
    from dataclasses import asdict

    return asdict(section)


def plan_stage(
    stage: str,
    cfg: Config,
    partners: dict[str, str | None] | None = None,
    attributes: list[str] | None = None,
) -> list[RunSpec]:
    """The runs of ``stage``. ``attributes`` restricts single/pairwise/adversarial to a subset
    (multi always trains all of them); ``partners`` is required for the adversarial stage."""
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
    if partners is None:
        raise StageOrderError(
            f"stage adversarial needs the negative partners of experiment {cfg.experiment_name!r}: "
            "run the single and pairwise stages, then `aal-k8s reduce`"
        )
    return [
        _spec(cfg, stage, (a,), (partners[a],), mode="adversarial", lam=lam)
        for a in names
        if partners.get(a)
        for lam in cfg.adversarial.lambdas
    ]

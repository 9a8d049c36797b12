"""The ``Stage`` interface: what the rest of the package knows about a stage.

A stage is declared once, in its own module of this package, and registered in protocol order in
``aal_k8s.stages``; the run-id tag, the protocol phase, the planning, the mode (and through it the
objective, ``aal_k8s.train.modes``), the report's Table 1 row and the paper's key come from here.
This package imports nothing heavy (``aal_k8s.runspec`` and the CLI's ``--help`` import it): the
planner passes each stage a ``PlanInputs`` whose ``spec`` builds its RunSpecs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # (aal_k8s.runspec.RunSpec is not imported: runspec imports this package)
    from aal_k8s.config import Config
    from aal_k8s.modes import Options

#: Protocol phases, in order: partner discovery (planned from the config alone), the adversarial
#: grid (needs reduce's partners), the ablations (need its chosen lambdas, so a second reduce), the
#: replicates of the final comparison with more seeds (likewise; not ablations: no Table 1 row).
DISCOVERY, ADVERSARIAL, ABLATION, REPLICATES = "discovery", "adversarial", "ablation", "replicates"
PHASES = (DISCOVERY, ADVERSARIAL, ABLATION, REPLICATES)

#: What a stage may need beyond the config, each produced by reduce (``aal_k8s.reduce.load_plan_inputs``):
PARTNERS = "partners"  # the most negative partner per attribute
LAMBDAS = "lambdas"  # the lambda chosen on validation per attribute
GROUPS = "groups"  # every negative partner per attribute (pairwise stage)
FINALS = "finals"  # the kind of final classifier validation chose per attribute: single | adversarial


@dataclass(frozen=True)
class PlanInputs:
    """What a stage plans from. ``spec(...)`` makes a RunSpec of this stage in its mode."""

    cfg: "Config"
    names: list[str]  # the attributes asked for (per-attribute stages plan only these)
    all_names: list[str]  # every attribute of the dataset, in dataset order
    partners: dict[str, str | None]
    lambdas: dict[str, float]
    groups: dict[str, list[str]]
    finals: dict[str, str]
    spec: Callable[..., "RunSpec"]  # (primary, auxiliary=(), lam=0.0, options=None, init_from="")
    run_of: Callable[[str], "RunSpec"]  # the one run of an all-attribute stage, e.g. "multi"

    def with_partner(self) -> list[str]:
        """The asked-for attributes that have a partner (the adversarial and ablation runs')."""
        return [a for a in self.names if self.partners.get(a)]


@dataclass(frozen=True)
class Stage:
    name: str
    tag: str  # run-id prefix (sin-a01-...); never change it: run ids would move
    mode: str  # training mode (aal_k8s.modes), which decides the objective
    phase: str  # one of PHASES
    plan: Callable[[PlanInputs], list["RunSpec"]]
    needs: tuple[str, ...] = ()  # of PARTNERS, LAMBDAS, GROUPS, FINALS, checked in that order by the planner
    all_attributes: bool = False  # one run over every attribute (run ids and labels say k<M>, "all")
    paper_protocol: bool = False  # in ``aal-k8s pipeline``'s default (the paper's protocol)
    table1_key: str = ""  # the report's row id in the paper's Table 1 ablation; "" = no row
    label: str = ""  # that row's label
    summary: str = ""  # one line for docs and help


def schedule(cfg: "Config"):
    """The adversarial modes' lambda schedule, from ``adversarial.*``."""
    from aal_k8s.modes import AdversarialOptions

    adv = cfg.adversarial
    dann = adv.lambda_schedule == "dann"
    return AdversarialOptions(adv.lambda_schedule, adv.dann_alpha if dann else None)


def schedule_fields(cfg: "Config") -> dict[str, Any]:
    """``schedule(cfg)`` as keyword arguments, for the options that extend it."""
    s = schedule(cfg)
    return {"lambda_schedule": s.lambda_schedule, "dann_alpha": s.dann_alpha}


def one_per_partner(inputs: PlanInputs, options: "Options", init_from: str = "") -> list["RunSpec"]:
    """The ablations' plan: one run per attribute with a partner, at its chosen lambda."""
    return [
        inputs.spec((a,), (inputs.partners[a],), lam=inputs.lambdas[a], options=options, init_from=init_from)
        for a in inputs.with_partner()
    ]

"""Plan and execute one stage through the configured backend (used by submit and pipeline)."""

from __future__ import annotations

import sys

from aal_k8s.backends import Backend, SubmitReport
from aal_k8s.config import Config
from aal_k8s.runspec import RunSpec
from aal_k8s.stages import DISCOVERY_STAGES
from aal_k8s.store import ExperimentStore


def add_stage_args(p, attrs_help: str) -> None:
    """``--stage`` and ``--attrs``, shared by the commands that act on one stage's runs."""
    from aal_k8s.stages import STAGES

    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--attrs", metavar="A,B,...", help=attrs_help)


def stage_runs(args):
    """(config, experiment store, the stage's RunSpecs, backend) for ``--stage``/``--attrs``."""
    from aal_k8s.backends import get_backend
    from aal_k8s.cli.common import open_experiment
    from aal_k8s.data import resolve_attributes

    cfg, exp = open_experiment(args)
    attrs = resolve_attributes(cfg.dataset.name, args.attrs.split(",")) if args.attrs else None
    specs = plan(cfg, exp, args.stage, attrs)
    return cfg, exp, specs, get_backend(cfg.executor.backend, cfg)


def plan(cfg: Config, exp: ExperimentStore, stage: str, attributes: list[str] | None = None) -> list[RunSpec]:
    # here, not at the top: the planner imports torch, and `--help` imports this module
    from aal_k8s.planner import plan_stage
    from aal_k8s.reduce import load_plan_inputs

    if stage in DISCOVERY_STAGES:
        return plan_stage(stage, cfg, attributes=attributes)
    given = load_plan_inputs(exp, cfg, stage)
    return plan_stage(
        stage, cfg, given.partners, attributes, lambdas=given.lambdas, groups=given.groups, finals=given.finals
    )


def execute_stage(backend: Backend, exp: ExperimentStore, stage: str, specs: list[RunSpec]) -> SubmitReport:
    print(f"stage {stage}: {len(specs)} runs", file=sys.stderr)
    for spec in specs:  # truncated or altered records: moved aside, so the backend runs them again
        problem = exp.record_problem(spec.run_id)
        if problem:
            aside = exp.quarantine_record(spec.run_id)
            where = f"moved to {exp.store.url(aside)}" if aside else "already moved aside"
            print(f"run {spec.run_id}: {problem}; {where}, the run is trained again", file=sys.stderr)
    if stage == "adversarial" and backend.cfg.adversarial.lambda_search == "halving":
        from aal_k8s.backends import run_halving

        report = run_halving(backend, exp, backend.cfg, specs)
    else:
        report = backend.submit(specs, exp)
    if report.skipped:
        print(f"stage {stage}: {len(report.skipped)} already complete, skipped", file=sys.stderr)
    return report


def print_failures(report: SubmitReport, stage: str) -> None:
    for run_id, why in sorted(report.failed.items()):
        print(f"stage {stage}: run {run_id} failed: {why}", file=sys.stderr)

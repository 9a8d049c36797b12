"""Submit the runs of one stage that are not complete yet.

With the local backend the runs execute now, in parallel processes; with the Kubernetes backend
one Job per run is created and the command returns (watch with ``aal-k8s status`` or kubectl).
``--dry-run`` prints what would be submitted and writes nothing.
"""

from __future__ import annotations

from aal_k8s.cli.common import add_config_args, examples
from aal_k8s.cli.stages import add_stage_args, execute_stage, print_failures, stage_runs
from aal_k8s.cost import build_plan, confirm
from aal_k8s.experiment import ensure_pinned

HELP = "submit the runs of one stage"
EXAMPLES = examples(
    "aal-k8s submit --stage single --dataset synthetic",
    "aal-k8s submit --stage pairwise --dataset celeba --backend k8s",
    "aal-k8s submit --stage adversarial --attrs Big_Lips,Smiling --dry-run",
)


def add_arguments(p) -> None:
    add_stage_args(p, "only these attributes (names or 1-based indices)")
    p.add_argument("--dry-run", action="store_true", help="print the runs (k8s: the manifests, to inspect) and exit")
    p.add_argument("--yes", "-y", action="store_true", help="k8s: create the Jobs without asking, however many")
    add_config_args(p)


def run(args) -> int:
    cfg, exp, specs, backend = stage_runs(args)
    if args.dry_run:
        print(backend.render(specs, exp), end="")
        return 0
    from aal_k8s.data.sources import check_source

    check_source(cfg.dataset, exp.store, local=cfg.executor.backend == "local")
    backend.preflight()
    if cfg.executor.backend == "k8s":
        confirm(build_plan(cfg, exp, [args.stage], lambda _: specs), cfg, args.yes)
    ensure_pinned(exp, cfg)
    if backend.name == "local":  # runs execute now: show them (k8s returns at once: `aal-k8s watch`)
        from aal_k8s.cli.progress import live_view

        with live_view(cfg, exp, backend, [args.stage]):
            report = execute_stage(backend, exp, args.stage, specs)
    else:
        report = execute_stage(backend, exp, args.stage, specs)
    print_failures(report, args.stage)
    print(f"stage {args.stage}: {len(report.submitted)} submitted, {len(report.skipped)} already complete, "
          f"{len(report.failed)} failed")
    return 1 if report.failed else 0

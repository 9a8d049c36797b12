"""Run the whole AAL protocol: single -> pairwise -> multi -> reduce -> adversarial -> reduce ->
final model set -> report. Finished runs are skipped, so re-running it trains nothing new and an
interrupted pipeline continues where it stopped.

``--stages all`` adds the affinity stage (partner discovery in one run) and the paper's ablations
(gan, wgan, shared, group; after adversarial, at each attribute's chosen lambda); a comma list picks
stages, e.g. ``--stages single,multi,affinity,adversarial --partners-from affinity`` skips pairwise.
"""

from __future__ import annotations

import os
import sys

from aal_k8s.backends import get_backend
from aal_k8s.cli.common import add_config_args, examples, open_experiment
from aal_k8s.cli.plan import open_for_plan, parse_stages, protocol_plan, with_seeds
from aal_k8s.cli.report import write_report
from aal_k8s.cost import confirm
from aal_k8s.cli.stages import execute_stage, plan, print_failures
from aal_k8s.experiment import ensure_pinned
from aal_k8s.stages import BY_NAME, PAPER_STAGES, PHASES, STAGES

HELP = "run the whole protocol end to end"
EXAMPLES = examples(
    "aal-k8s pipeline --dataset synthetic",
    "aal-k8s pipeline --dataset synthetic --set train.epochs=2 --store /tmp/aal",
    "aal-k8s pipeline --dataset synthetic --stages all",
    "aal-k8s pipeline --dataset synthetic --stages single,multi,affinity,adversarial --partners-from affinity",
    "aal-k8s pipeline --dataset celeba --backend k8s --store s3://bucket/aal",
)


def add_arguments(p) -> None:
    p.add_argument("--output", "-o", metavar="FILE", help="also write the report here (default: <experiment>-report.md)")
    p.add_argument(
        "--stages", default="paper", metavar="LIST",
        help=f"paper (default: {','.join(PAPER_STAGES)}), all (+ "
        f"{','.join(s for s in STAGES if s not in PAPER_STAGES)}), or a comma list of stages",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the plan (runs, GPU-hours, bytes, cost) and exit")
    p.add_argument("--yes", "-y", action="store_true", help="k8s: create the Jobs without asking, however many")
    add_config_args(p)


def run(args) -> int:
    # here, not at the top: they import torch, and `aal-k8s --help` imports this module
    from aal_k8s.data.sources import check_source
    from aal_k8s.final import build_final
    from aal_k8s.cli.progress import live_view
    from aal_k8s.reduce import reduce_experiment, write_reduce

    stages = parse_stages(args.stages)
    if args.dry_run:
        cfg, exp = open_for_plan(args)
        print(protocol_plan(cfg, exp, with_seeds(stages, cfg)).render(), end="")
        return 0
    cfg, exp = open_experiment(args)
    stages = with_seeds(stages, cfg)
    backend = get_backend(cfg.executor.backend, cfg)
    check_source(cfg.dataset, exp.store, local=cfg.executor.backend == "local")
    backend.preflight()
    if cfg.executor.backend == "k8s":
        confirm(protocol_plan(cfg, exp, stages), cfg, args.yes)
    ensure_pinned(exp, cfg)

    def stage(name: str) -> bool:
        specs = plan(cfg, exp, name)
        report = execute_stage(backend, exp, name, specs)
        waited = [s for s in specs if s.run_id not in report.stopped]  # halving: the stopped never commit
        for run_id, st in backend.wait(waited, exp).items():  # k8s: runs fail after submit returned
            if st.state == "failed":
                report.failed.setdefault(run_id, st.reason or "failed")
        print_failures(report, name)
        return not report.failed

    # discovery, then adversarial, then the ablations (they need its chosen lambdas): reduce between
    phases = [[n for n in stages if BY_NAME[n].phase == phase] for phase in PHASES]
    out = None
    with live_view(cfg, exp, backend, stages):
        for phase in phases:
            if not phase:
                continue
            if out is not None:
                write_reduce(exp, out)
            for name in phase:
                if not stage(name):
                    print(f"pipeline stopped: stage {name} has failed runs (see `aal-k8s status`)", file=sys.stderr)
                    return 1
            out = reduce_experiment(exp, cfg)
    write_reduce(exp, out)
    complete = len(out.final) == len(out.attributes)
    if complete:
        build_final(exp, cfg, out)
    else:
        print("final model set not built: the stages run do not give every attribute a classifier", file=sys.stderr)
    path = os.path.abspath(args.output or f"{exp.experiment}-report.md")
    print(write_report(exp, out, path))
    if complete:
        print(f"final model set: {exp.store.url(exp.key('final', 'manifest.json'))}")
    print(f"report: {path} (and {exp.store.url(exp.key('report', 'report.md'))})")
    return 0

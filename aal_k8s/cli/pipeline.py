"""Run the whole AAL protocol: single -> pairwise -> multi -> reduce -> adversarial -> reduce ->
final model set -> report. Finished runs are skipped, so re-running it trains nothing new and an
interrupted pipeline continues where it stopped.
"""

from __future__ import annotations

import os
import sys

from aal_k8s.backends import get_backend
from aal_k8s.cli.common import add_config_args, config_from_args, examples, experiment_store
from aal_k8s.cli.report import write_report
from aal_k8s.cli.stages import execute_stage, plan, print_failures
from aal_k8s.data.common import check_source
from aal_k8s.final import build_final
from aal_k8s.reduce import reduce_experiment, write_reduce

HELP = "run the whole protocol end to end"
EXAMPLES = examples(
    "aal-k8s pipeline --dataset synthetic",
    "aal-k8s pipeline --dataset synthetic --set train.epochs=2 --store /tmp/aal",
    "aal-k8s pipeline --dataset celeba --backend k8s --store s3://bucket/aal",
)


def add_arguments(p) -> None:
    p.add_argument("--output", "-o", metavar="FILE", help="also write the report here (default: <experiment>-report.md)")
    add_config_args(p)


def run(args) -> int:
    cfg = config_from_args(args)
    exp = experiment_store(cfg)
    backend = get_backend(cfg.executor.backend, cfg)
    check_source(cfg.dataset, exp.store, local=cfg.executor.backend == "local")

    def stage(name: str) -> bool:
        specs = plan(cfg, exp, name)
        report = execute_stage(backend, exp, name, specs)
        for run_id, st in backend.wait(specs, exp).items():  # k8s: runs fail after submit returned
            if st.state == "failed":
                report.failed.setdefault(run_id, st.reason or "failed")
        print_failures(report, name)
        return not report.failed

    for name in ("single", "pairwise", "multi"):
        if not stage(name):
            print(f"pipeline stopped: stage {name} has failed runs (see `aal-k8s status`)", file=sys.stderr)
            return 1
    write_reduce(exp, reduce_experiment(exp, cfg))
    if not stage("adversarial"):
        print("pipeline stopped: stage adversarial has failed runs (see `aal-k8s status`)", file=sys.stderr)
        return 1
    out = reduce_experiment(exp, cfg)
    write_reduce(exp, out)
    build_final(exp, cfg, out)
    path = os.path.abspath(args.output or f"{exp.experiment}-report.md")
    print(write_report(exp, out, path))
    print(f"final model set: {exp.store.url(exp.key('final', 'manifest.json'))}")
    print(f"report: {path} (and {exp.store.url(exp.key('report', 'report.md'))})")
    return 0

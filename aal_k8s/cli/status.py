"""Per stage: how many runs are complete (in the store), running, pending, failed, not submitted,
stopped (by halving, at a rung: listed with it).

Pending runs are grouped by reason (k8s: Unschedulable / FailedScheduling, image pulls, Kueue
admission...); failed runs are listed with their reasons. Completion is read from the store, so
the counts are true whichever backend executed the runs.
"""

from __future__ import annotations

from aal_k8s.backends import STATES, RunState, get_backend, mark_stopped
from aal_k8s.cli.common import add_config_args, examples, open_experiment
from aal_k8s.cli.stages import plan
from aal_k8s.errors import StageOrderError
from aal_k8s.stages import STAGES

HELP = "show per-stage run counts and failures"
EXAMPLES = examples("aal-k8s status --dataset synthetic", "aal-k8s status --stage pairwise --dataset celeba --backend k8s")


def add_arguments(p) -> None:
    p.add_argument("--stage", choices=STAGES, help="only this stage")
    add_config_args(p)


def run(args) -> int:
    cfg, exp = open_experiment(args)
    backend = get_backend(cfg.executor.backend, cfg)
    header = f"{'stage':<12}" + "".join(f"{s:>14}" for s in STATES)
    print(f"experiment {exp.experiment} in {exp.store.uri} ({backend.name} backend)")
    print(header)
    failures, stopped, waiting = [], [], {}
    for stage in [args.stage] if args.stage else STAGES:
        try:
            specs = plan(cfg, exp, stage)
        except StageOrderError:
            print(f"{stage:<12}" + f"{'(waits for reduce)':>{14 * len(STATES)}}")
            continue
        states = mark_stopped(exp, cfg, specs, backend.states(specs, exp))
        for spec in specs:  # a record that fails verification is no completion, whatever the backend saw
            problem = exp.record_problem(spec.run_id)
            if problem:
                states[spec.run_id] = RunState(spec.run_id, "failed", f"{problem}; `aal-k8s submit` retrains the run")
        counts = {s: 0 for s in STATES}
        for st in states.values():
            counts[st.state] += 1
            if st.state == "failed":
                failures.append(f"  {stage} {st.run_id}: {st.reason or 'no reason recorded'}")
            elif st.state == "stopped":
                stopped.append(f"  {stage} {st.run_id}: {st.reason}")
            elif st.state == "pending" and st.reason:
                waiting.setdefault((stage, st.reason), []).append(st.run_id)
        print(f"{stage:<12}" + "".join(f"{counts[s]:>14}" for s in STATES))
    if waiting:  # grouped by reason: Unschedulable / FailedScheduling apart from image pulls, queues...
        print("\npending, by reason:")
        order = lambda kv: (STAGES.index(kv[0][0]), -len(kv[1]), kv[0][1])  # noqa: E731 - stage, most runs first
        for (stage, reason), ids in sorted(waiting.items(), key=order):
            more = f", +{len(ids) - 3} more" if len(ids) > 3 else ""
            print(f"  {stage} {len(ids)} runs: {reason} [{', '.join(sorted(ids)[:3])}{more}]")
    if stopped:
        print("\n".join(["", "stopped by halving (not trained further, never committed):", *stopped]))
    if failures:
        print("\n".join(["", "failed runs:", *failures]))
    return 0

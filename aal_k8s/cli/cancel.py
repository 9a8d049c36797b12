"""Cancel the runs of one stage that are queued or running.

With the Kubernetes backend this deletes their Jobs (background propagation: Kubernetes removes
the pods); runs already committed, and everything in the store, are left untouched. Deleting the
Job of a failed run also lets the next ``submit`` retry it. The local backend runs everything
inside ``submit`` and has nothing to cancel.
"""

from __future__ import annotations

from aal_k8s.cli.common import add_config_args, examples
from aal_k8s.cli.stages import add_stage_args, stage_runs

HELP = "cancel the queued/running runs of one stage (k8s: delete their Jobs)"
EXAMPLES = examples(
    "aal-k8s cancel --stage pairwise --dataset celeba --backend k8s",
    "aal-k8s cancel --stage adversarial --attrs Big_Lips --backend k8s",
)


def add_arguments(p) -> None:
    add_stage_args(p, "only the runs of these attributes")
    add_config_args(p)


def run(args) -> int:
    _, exp, specs, backend = stage_runs(args)
    cancelled = backend.cancel(specs, exp)
    for run_id in cancelled:
        print(f"cancelled {run_id}")
    print(f"stage {args.stage}: {len(cancelled)} runs cancelled ({backend.name} backend); committed results untouched")
    return 0

"""Cancel the runs of one stage that are queued or running.

With the Kubernetes backend this deletes their Jobs (background propagation: Kubernetes removes
the pods); runs already committed, and everything in the store, are left untouched. Deleting the
Job of a failed run also lets the next ``submit`` retry it. The local backend runs everything
inside ``submit`` and has nothing to cancel.
"""

from __future__ import annotations

from aal_k8s.backends import get_backend
from aal_k8s.cli.common import add_config_args, config_from_args, examples, experiment_store
from aal_k8s.cli.stages import plan
from aal_k8s.data import resolve_attributes
from aal_k8s.runspec import STAGES

HELP = "cancel the queued/running runs of one stage (k8s: delete their Jobs)"
EXAMPLES = examples(
    "aal-k8s cancel --stage pairwise --dataset celeba --backend k8s",
    "aal-k8s cancel --stage adversarial --attrs Big_Lips --backend k8s",
)


def add_arguments(p) -> None:
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--attrs", metavar="A,B,...", help="only the runs of these attributes")
    add_config_args(p)


def run(args) -> int:
    cfg = config_from_args(args)
    attrs = resolve_attributes(cfg.dataset.name, args.attrs.split(",")) if args.attrs else None
    exp = experiment_store(cfg)
    specs = plan(cfg, exp, args.stage, attrs)
    backend = get_backend(cfg.executor.backend, cfg)
    cancelled = backend.cancel(specs, exp)
    for run_id in cancelled:
        print(f"cancelled {run_id}")
    print(f"stage {args.stage}: {len(cancelled)} runs cancelled ({backend.name} backend); committed results untouched")
    return 0

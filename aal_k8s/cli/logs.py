"""Print the log of one run: with the Kubernetes backend, the worker log of the run's newest pod;
with the local backend, the worker output kept in the store (``runs/<id>/local.log``).
"""

from __future__ import annotations

from aal_k8s.backends import get_backend
from aal_k8s.cli.common import add_config_args, examples, open_experiment

HELP = "print the log of one run"
EXAMPLES = examples(
    "aal-k8s logs sin-a01-3f2a9c1d --dataset synthetic",
    "aal-k8s logs pair-a03-a07-1a2b3c4d --dataset celeba --backend k8s --follow",
)


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run id, as `aal-k8s status` and `aal-k8s submit --dry-run` show it")
    p.add_argument("--follow", "-f", action="store_true", help="k8s: keep streaming the pod's log")
    add_config_args(p)


def run(args) -> int:
    cfg, exp = open_experiment(args)
    backend = get_backend(cfg.executor.backend, cfg)
    backend.logs(args.run, exp, follow=args.follow)
    return 0

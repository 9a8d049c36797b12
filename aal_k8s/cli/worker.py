"""Execute one run (the entry point of every local process and Kubernetes pod)."""

from __future__ import annotations

from aal_k8s.cli.common import examples

HELP = "execute one run and commit it to the store"
EXAMPLES = examples("aal-k8s worker --store s3://bucket/aal --experiment celeba --run pair-a03-a07-1a2b3c4d")


def add_arguments(p) -> None:
    p.add_argument("--store", required=True, metavar="URI")
    p.add_argument("--experiment", required=True, metavar="NAME")
    p.add_argument("--run", required=True, metavar="RUN_ID", action="append",
                   help="the run; given several times: a pack, trained together (executor.runs_per_job)")
    p.add_argument(
        "--until-epoch", type=int, default=0, metavar="N",
        help="a halving rung: stop after epoch N's checkpoint and record the rung (no commit)",
    )  # fmt: skip


def run(args) -> int:
    import sys

    from aal_k8s.worker import execute

    # SIGTERM (preemption, eviction, a deleted Job, the local backend stopping) unwinds through
    # execute (aal_k8s.cli.main's handler): the attempt's log still reaches the store; exit 143.

    # sys.stderr as it is now (execute's default was bound when aal_k8s.worker was first imported)
    if args.until_epoch < 0:
        print(f"--until-epoch: must be >= 0, got {args.until_epoch}", file=sys.stderr)
        return 2
    if len(args.run) > 1:
        from aal_k8s.pack_worker import execute_pack

        return execute_pack(args.store, args.experiment, args.run, log=sys.stderr, until_epoch=args.until_epoch)
    return execute(args.store, args.experiment, args.run[0], log=sys.stderr, until_epoch=args.until_epoch)

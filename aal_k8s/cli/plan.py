"""Show what a protocol (or one stage) will cost before anything is created: runs per stage, how
many are already committed, projected device-hours from measured rates (a calibration from this
experiment's committed runs, or the figures recorded for ``plan.device_class``; the plan says
which), store bytes, dataset egress and the cost at ``plan.gpu_hour_price``. Writes nothing.
"""

from __future__ import annotations

from aal_k8s.cli.common import add_config_args, examples, open_experiment
from aal_k8s.errors import AALError

HELP = "show runs, GPU-hours, store bytes, egress and cost before launching"
EXAMPLES = examples(
    "aal-k8s plan --dataset celeba --backend k8s --store s3://bucket/aal",
    "aal-k8s plan --dataset celeba --stages all --set plan.gpu_hour_price=2.4",
    "aal-k8s plan --experiment synthetic --stages adversarial",
)


def add_arguments(p) -> None:
    p.add_argument(
        "--stages", default="paper", metavar="LIST",
        help="paper (default: single,pairwise,multi,adversarial), all, or a comma list of stages",
    )  # fmt: skip
    add_config_args(p)


def parse_stages(text: str) -> list[str]:
    """``paper`` | ``all`` | a comma list, returned in protocol order; unknown names are an error."""
    from aal_k8s.planner import ALL, PIPELINE

    if text == "paper":
        return list(PIPELINE)
    if text == "all":
        return list(ALL)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL]
    if unknown or not names:
        raise AALError(f"--stages: unknown stage(s) {', '.join(map(repr, unknown)) or '(none given)'} (known: paper, all, {', '.join(ALL)})")
    return [n for n in ALL if n in names]


def with_seeds(stages: list[str], cfg) -> list[str]:
    """``stages`` plus the seeds stage when ``adversarial.seeds`` asks for more than one seed and
    the adversarial stage is run: ``--seeds N`` alone makes the pipeline's final comparison N-seeded.
    With one seed the stage plans nothing, so it is left out (``--stages all`` shows no empty row)."""
    if cfg.adversarial.seeds <= 1:
        return [s for s in stages if s != "seeds"]
    if "adversarial" in stages and "seeds" not in stages:
        return [*stages, "seeds"]
    return stages


def run(args) -> int:
    stages = parse_stages(args.stages)
    cfg, exp = open_for_plan(args)
    print(protocol_plan(cfg, exp, with_seeds(stages, cfg)).render(), end="")
    return 0


def open_for_plan(args):
    """``open_experiment``, except that a store this machine cannot read (no credentials yet) is a
    warning: a plan is made before anything exists, from the flags alone."""
    import sys

    from aal_k8s.cli.common import config_from_args, experiment_store
    from aal_k8s.errors import StoreError

    try:
        return open_experiment(args)
    except StoreError as e:
        print(f"warning: cannot read the store ({e.message}); planning from the flags alone", file=sys.stderr)
        cfg = config_from_args(args)
        return cfg, experiment_store(cfg)


def protocol_plan(cfg, exp, stages: list[str]):
    """The cost plan of ``stages`` (used by plan, pipeline --dry-run and the k8s confirmation)."""
    from aal_k8s.cli.stages import plan
    from aal_k8s.cost import build_plan

    return build_plan(cfg, exp, stages, lambda stage: plan(cfg, exp, stage))

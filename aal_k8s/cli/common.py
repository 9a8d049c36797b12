"""Arguments and helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from aal_k8s.config import DATASET_PRESETS, Config, load_config
from aal_k8s.partners import PARTNER_METHODS
from aal_k8s.store import ExperimentStore, open_store


def add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("experiment")
    g.add_argument("--config", "-c", metavar="FILE", help="experiment config (YAML)")
    g.add_argument("--dataset", "-d", metavar="NAME", help=f"{' | '.join(DATASET_PRESETS)} (default: synthetic)")
    g.add_argument("--experiment", "-e", metavar="NAME", help="store prefix (default: the dataset name)")
    g.add_argument("--store", metavar="URI", help="results store: a folder or s3://bucket/prefix (store.uri)")
    g.add_argument("--backend", choices=("local", "k8s"), help="where runs execute (executor.backend)")
    g.add_argument(
        "--partners-from", choices=PARTNER_METHODS,
        help="how negative partners are found (adversarial.partners_from; default pairwise, the paper)",
    )  # fmt: skip
    g.add_argument(
        "--seeds", type=int, metavar="N",
        help="the final comparison over N seeds: stage seeds retrains the final classifiers and single-task "
             "baselines with N-1 more seeds (adversarial.seeds; default 1)",
    )  # fmt: skip
    g.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.epochs=2 (repeatable)",
    )  # fmt: skip
    g.add_argument(
        "--override-pinned", action="store_true",
        help="apply flags that change what the pinned experiment computes, and record the change in "
        "<experiment>/experiment.yaml (default: such flags are an error)",
    )  # fmt: skip


def open_experiment(args) -> tuple[Config, ExperimentStore]:
    """The command's config and experiment store. The config comes from the experiment's pinned
    record when it has one (flags on top; result-changing drift is an error), else from the flags;
    commands that write call ``aal_k8s.experiment.ensure_pinned`` before their first write."""
    from aal_k8s.experiment import resolve

    flags = config_from_args(args)
    exp = experiment_store(flags)
    cfg = resolve(
        flags, exp, config_file=args.config, overrides=_overrides(args), dataset=args.dataset,
        override=getattr(args, "override_pinned", False),
    )  # fmt: skip
    return cfg, exp


def config_from_args(args) -> Config:
    """The config the flags alone describe (no pinned record)."""
    return load_config(args.config, _overrides(args), dataset=args.dataset)


def _overrides(args) -> list[str]:
    overrides = list(args.overrides)
    if getattr(args, "store", None):
        overrides.append(f"store.uri={args.store}")
    if getattr(args, "experiment", None):
        overrides.append(f"experiment={args.experiment}")
    if getattr(args, "backend", None):
        overrides.append(f"executor.backend={args.backend}")
    if getattr(args, "partners_from", None):
        overrides.append(f"adversarial.partners_from={args.partners_from}")
    if getattr(args, "seeds", None) is not None:
        overrides.append(f"adversarial.seeds={args.seeds}")
    return overrides


def experiment_store(cfg: Config) -> ExperimentStore:
    return ExperimentStore(open_store(cfg.store.uri, cfg.store), cfg.experiment_name)


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines)

"""Build the final model set (one classifier per attribute) from the stored reduce output."""

from __future__ import annotations

from aal_k8s.cli.common import add_config_args, config_from_args, examples, experiment_store
from aal_k8s.final import build_final
from aal_k8s.reduce import load_reduce

HELP = "write the final model set (safetensors + manifest) to the store"
EXAMPLES = examples("aal-k8s final --dataset synthetic")


def add_arguments(p) -> None:
    add_config_args(p)


def run(args) -> int:
    cfg = config_from_args(args)
    exp = experiment_store(cfg)
    manifest = build_final(exp, cfg, load_reduce(exp))
    for m in manifest["models"]:
        print(f"{m['attribute']}: {m['source']}, test {100 * m['test_acc']:.2f}% -> {m['file']}")
    print(f"wrote {exp.store.url(exp.key('final', 'manifest.json'))}")
    return 0

"""Build the final model set (one classifier per attribute) from the stored reduce output."""

from __future__ import annotations

from aal_k8s.cli.common import add_config_args, examples, open_experiment
from aal_k8s.errors import StageOrderError
from aal_k8s.experiment import ensure_pinned
from aal_k8s.final import build_final
from aal_k8s.reduce import ReduceOutput

HELP = "write the final model set (safetensors + manifest) to the store"
EXAMPLES = examples("aal-k8s final --dataset synthetic")


def add_arguments(p) -> None:
    add_config_args(p)


def load_reduce(exp) -> ReduceOutput:
    summary = exp.get_json("reduce", "summary.json")
    if summary is None:
        raise StageOrderError(f"experiment {exp.experiment!r} has no reduce output: run `aal-k8s reduce` first")
    return ReduceOutput.from_json(summary)


def run(args) -> int:
    cfg, exp = open_experiment(args)
    out = load_reduce(exp)
    ensure_pinned(exp, cfg)
    manifest = build_final(exp, cfg, out)
    for m in manifest["models"]:
        print(f"{m['attribute']}: {m['source']}, test {100 * m['test_acc']:.2f}% -> {m['file']}")
    print(f"wrote {exp.store.url(exp.key('final', 'manifest.json'))}")
    return 0

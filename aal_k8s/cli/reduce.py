"""Reduce committed runs: pairwise matrix, negative partners, chosen lambda, final choice.

Writes ``reduce/summary.json``, ``reduce/pairwise_matrix.csv`` and (once the adversarial stage is
complete) ``reduce/final.csv`` to the store. Safe to run at any time: it reads only committed runs
and lists the missing ones.
"""

from __future__ import annotations

from aal_k8s.cli.common import add_config_args, examples, open_experiment
from aal_k8s.experiment import ensure_pinned
from aal_k8s.reduce import reduce_experiment, write_reduce

HELP = "reduce committed runs into partners, lambda and final choices"
EXAMPLES = examples("aal-k8s reduce --dataset synthetic", "aal-k8s reduce --dataset celeba --store s3://bucket/aal")


def add_arguments(p) -> None:
    add_config_args(p)


def run(args) -> int:
    cfg, exp = open_experiment(args)
    ensure_pinned(exp, cfg)
    out = reduce_experiment(exp, cfg)
    write_reduce(exp, out)
    for stage, ids in sorted(out.missing.items()):
        print(f"{stage}: {len(ids)} runs not committed")
    for a in out.attributes:
        partner = out.partners.get(a)
        line = f"{a}: partner {partner or 'none'}"
        if a in out.final:
            c = out.final[a]
            line += f", final {c.source}" + (f" (lambda {c.lam:g})" if c.lam is not None else "")
            line += f", val {100 * c.val:.2f}%, test {100 * c.test:.2f}%"
        if out.partners:
            print(line)
    print(f"wrote {exp.store.url(exp.key('reduce', 'summary.json'))}")
    return 0

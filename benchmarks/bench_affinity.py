"""What partner discovery costs: the affinity stage (one run) against the pairwise stage (M(M-1)/2
runs), both against one ordinary run (the multi-task run over the same attributes).

Trains, on the synthetic dataset with its default config (or ``--set`` overrides): the multi run,
the affinity run (every ``affinity.every`` steps, default 2M), and, with ``--pairwise``, the 15
pairwise runs; prints seconds, the affinity run's share spent measuring, the ratio to the multi run,
and the partner the affinity matrix gives each planted attribute.

    python benchmarks/bench_affinity.py                      # multi + affinity (about 30 s on 1 core)
    python benchmarks/bench_affinity.py --pairwise --append BENCHMARKS.md
    python benchmarks/bench_affinity.py --set affinity.every=6 --set affinity.measure_on=train
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aal_k8s.config import load_config  # noqa: E402
from aal_k8s.data import load_dataset  # noqa: E402
from aal_k8s.data.synthetic import PLANTED  # noqa: E402
from aal_k8s.modes import options_of  # noqa: E402
from aal_k8s.planner import plan_stage  # noqa: E402
from aal_k8s.reduce import _matrix, most_negative_partner  # noqa: E402
from aal_k8s.train import train_run  # noqa: E402
from bench_fused_heads import _git_commit, device_label  # noqa: E402  (this folder: the script's sys.path[0])


def _device(cfg) -> str:
    return device_label("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--pairwise", action="store_true", help="also time the pairwise stage (15 runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--append", metavar="FILE", help="append the table to this Markdown file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(dataset="synthetic", overrides=args.overrides)
    data = load_dataset(cfg.dataset)

    def timed(spec):
        t0 = time.perf_counter()
        result = train_run(spec, data)
        return result, time.perf_counter() - t0

    # the first run in a process pays one-time costs (oneDNN kernel selection, allocator): an
    # untimed run first, so neither timed run carries them
    timed(plan_stage("multi", load_config(dataset="synthetic", overrides=[*args.overrides, "train.epochs=1"]))[0])
    multi, t_multi = timed(plan_stage("multi", cfg)[0])
    (aff_spec,) = plan_stage("affinity", cfg)
    aff, t_aff = timed(aff_spec)
    rows = [("multi (one ordinary run)", 1, t_multi, ""), ("affinity", 1, t_aff, f"{aff.timings['affinity']:.1f} s measuring")]
    if args.pairwise:
        t_pair = sum(timed(s)[1] for s in plan_stage("pairwise", cfg))
        rows.append(("pairwise", len(plan_stage("pairwise", cfg)), t_pair, ""))
    z = aff.metrics()["affinity"]
    matrix = _matrix(z["tasks"], z["z"], transpose=True)
    found = {a: most_negative_partner(a, 0.0, matrix[a], z["tasks"]) for a, _ in PLANTED}

    opts = options_of(aff_spec.mode, aff_spec.options, aff_spec.run_id)
    lines = [
        f"### Affinity stage cost: {datetime.date.today().isoformat()}, commit {_git_commit()}, {_device(cfg)}",
        "",
        f"Synthetic dataset, default config{' + ' + ', '.join(args.overrides) if args.overrides else ''}; "
        f"affinity every {opts.every} steps, {z['measurements']} measurements, measured on {opts.measure_on}.",
        "",
        "| stage | runs | seconds | × one ordinary run | note |",
        "|---|---:|---:|---:|---|",
    ]
    for name, n, secs, note in rows:
        lines.append(f"| {name} | {n} | {secs:.1f} | {secs / t_multi:.2f} | {note} |")
    lines += ["", "Planted partner found by affinity: " + ", ".join(
        f"{a} ← {found[a] or 'none'} ({'yes' if found[a] == b else 'no, planted ' + b})" for a, b in PLANTED) + "."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

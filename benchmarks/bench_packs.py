"""Throughput of a pack of N runs (aal_k8s.packs, ``executor.runs_per_job``) vs the same N runs
trained one after the other, on the synthetic dataset (small_cnn), in one process.

The two sides are interleaved (pack, separate, pack, separate...) so that load from other processes
on a shared machine falls on both alike; each round trains the same N adversarial runs (square's
λ grid) for ``train.epochs`` epochs. Reported: the training seconds (the runs' ``timings.train``:
the epochs' steps, no evaluation, no data generation) and the wall seconds of the whole call, per
round (after one uncounted warm-up round), and the median speed-up of each.

    python benchmarks/bench_packs.py
    python benchmarks/bench_packs.py --rounds 3 --set dataset.synthetic.n_train=1500 --append BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from aal_k8s.config import load_config  # noqa: E402
from aal_k8s.data import load_dataset  # noqa: E402
from aal_k8s.packs import train_pack  # noqa: E402
from aal_k8s.planner import plan_stage  # noqa: E402
from aal_k8s.train import train_run  # noqa: E402


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4, help="runs per pack (N)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--append", metavar="FILE", help="append the result as a Markdown section")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lams = ", ".join(f"{0.1 * 3**i:g}" for i in range(args.runs))
    defaults = ["store.uri=/tmp/bench-packs-unused", "train.epochs=2", "train.heads_impl=reference",
                "dataset.synthetic.n_train=1000", "dataset.synthetic.n_val=200", "dataset.synthetic.n_test=200"]  # fmt: skip
    cfg = load_config(dataset="synthetic", overrides=[*defaults, f"adversarial.lambdas=[{lams}]", *args.set])
    data = load_dataset(cfg.dataset)
    specs = plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])
    rows = []
    for r in range(args.rounds + 1):  # round 0 warms up (oneDNN builds its kernels for each new shape): not counted
        t0 = time.perf_counter()
        packed = train_pack(specs, data)
        t1 = time.perf_counter()
        alone = [train_run(s, data) for s in specs]
        t2 = time.perf_counter()
        row = {
            "pack_train": sum(x.timings["train"] for x in packed), "pack_wall": t1 - t0,
            "sep_train": sum(x.timings["train"] for x in alone), "sep_wall": t2 - t1,
        }  # fmt: skip
        same = all(torch.equal(a.state_dict[k], b.state_dict[k]) for a, b in zip(packed, alone) for k in a.state_dict)
        row["bitwise"] = same
        if r:
            rows.append(row)
        print(f"round {r}{' (warm-up, not counted)' if not r else ''}: pack train {row['pack_train']:.2f}s wall {row['pack_wall']:.2f}s | separate train "
              f"{row['sep_train']:.2f}s wall {row['sep_wall']:.2f}s | train x{row['sep_train'] / row['pack_train']:.2f} "
              f"wall x{row['sep_wall'] / row['pack_wall']:.2f} | members bitwise = alone: {same}", flush=True)  # fmt: skip
    sp_train = statistics.median(r["sep_train"] / r["pack_train"] for r in rows)
    sp_wall = statistics.median(r["sep_wall"] / r["pack_wall"] for r in rows)
    print(f"median speed-up of a pack of {args.runs}: training x{sp_train:.2f}, wall x{sp_wall:.2f}")
    if args.append:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
        t = cfg.train
        s = cfg.dataset.synthetic
        lines = [
            "",
            f"### {datetime.date.today()}, commit {commit}{'-dirty' if dirty.strip() else ''}, CPU: {_cpu()}, "
            f"{args.threads} thread(s), torch {torch.__version__}",
            "",
            f"{args.runs} adversarial runs (square vs red_tint, λ {lams}), small_cnn, synthetic {s.n_train}/{s.n_val}/"
            f"{s.n_test} images of {s.image_size}px, batch {t.batch_size}, {t.epochs} epochs; pack and separate "
            f"interleaved in one process, {args.rounds} rounds after an uncounted warm-up round. Train s: the runs' `timings.train` summed (the pack "
            "splits its seconds over its members); wall: the whole call (evaluation and setup included).",
            "",
            "| round | pack train s | separate train s | train speed-up | pack wall s | separate wall s | wall speed-up | members bitwise = alone |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
        ]  # fmt: skip
        for i, r in enumerate(rows, 1):
            lines.append(f"| {i} | {r['pack_train']:.2f} | {r['sep_train']:.2f} | {r['sep_train'] / r['pack_train']:.2f}x | "
                         f"{r['pack_wall']:.2f} | {r['sep_wall']:.2f} | {r['sep_wall'] / r['pack_wall']:.2f}x | {r['bitwise']} |")  # fmt: skip
        lines += ["", f"Median: training {sp_train:.2f}x, wall {sp_wall:.2f}x.", ""]
        with open(args.append, "a") as f:
            f.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

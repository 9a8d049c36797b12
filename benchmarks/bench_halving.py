"""What λ by successive halving saves: the adversarial stage by grid (the paper) and by halving, on
the same discovery runs, through the local backend (worker processes, as ``aal-k8s pipeline``).

Runs single, pairwise and multi once in ``<work>/base`` (skipped when committed), copies that
store twice, runs ``submit --stage adversarial`` with ``adversarial.lambda_search`` grid and halving
and ``reduce`` in each copy, and prints: run-seconds of the adversarial stage (the runs' own train +
eval time from their records, the stopped runs' rung records included), wall seconds of the stage,
worker processes, run-epochs, the λ each attribute gets, and the final model set's mean val/test.

    python benchmarks/bench_halving.py --work /tmp/bench-halving
    python benchmarks/bench_halving.py --work /tmp/bench-halving --set train.epochs=3 --append BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import cli as _cli, commit as _commit, cpu as _cpu  # noqa: E402
from aal_k8s.config import load_config  # noqa: E402
from aal_k8s.data.synthetic import PLANTED  # noqa: E402
from aal_k8s.halving import run_epochs, rungs_for  # noqa: E402


def main_(args) -> int:
    sets = [x for s in args.set for x in ("--set", s)]
    base = os.path.join(args.work, "base")
    common = ["--dataset", "synthetic"]
    _cli(["pipeline", "--stages", "single,pairwise,multi", "--store", base, *common, *sets, "--override-pinned",
          "-o", os.path.join(args.work, "base.md")])  # fmt: skip
    rows = {}
    for search in ("grid", "halving"):
        store = os.path.join(args.work, search)
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(base, store)
        flags = [*common, "--store", store, *sets, "--set", f"adversarial.lambda_search={search}", "--override-pinned"]
        t0 = time.perf_counter()
        _cli(["submit", "--stage", "adversarial", *flags])
        wall = time.perf_counter() - t0
        _cli(["reduce", *flags])
        s = json.load(open(os.path.join(store, "synthetic", "reduce", "summary.json")))
        cfg = load_config(dataset="synthetic", overrides=[*args.set, f"adversarial.lambda_search={search}"])
        n, e = len(cfg.adversarial.lambdas), cfg.train.epochs
        attrs = [a for a, b in s["partners"].items() if b]
        procs = len(attrs) * n if search == "grid" else sum(
            len(d["entrants"]) for h in s["halving"].values() for d in h["decisions"]
        ) + len(attrs)  # fmt: skip
        epochs = len(attrs) * (n * e if search == "grid" else run_epochs(n, e, cfg.adversarial.halving_eta, rungs_for(cfg)))
        final = s["final"]
        rows[search] = {
            "run_s": s["stage_seconds"]["adversarial"],
            "wall_s": wall,
            "procs": procs,
            "epochs": epochs,
            "lam": {a: s["chosen_lambda"].get(a) for a in attrs},
            "val": sum(c["val"] for c in final.values()) / len(final),
            "test": sum(c["test"] for c in final.values()) / len(final),
            "rungs": rungs_for(cfg) if search == "halving" else [],
            "eta": cfg.adversarial.halving_eta,
        }
    g, h = rows["grid"], rows["halving"]
    planted = {a for a, _ in PLANTED}
    lines = [
        f"### λ by successive halving: {datetime.date.today()}, commit {_commit()}, CPU: {_cpu()}, "
        f"{os.cpu_count()} cores (shared), settings: {' '.join(args.set) or 'synthetic defaults'}",
        "",
        "| adversarial stage | run-seconds | wall s | worker processes | run-epochs | final val (mean) | final test (mean) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("grid (paper)", g), (f"halving (eta {h['eta']}, rungs {h['rungs']})", h)):
        lines.append(f"| {name} | {r['run_s']:.1f} | {r['wall_s']:.1f} | {r['procs']} | {r['epochs']} | {100 * r['val']:.2f} | {100 * r['test']:.2f} |")
    lines += [
        "",
        f"halving / grid: run-seconds {h['run_s'] / g['run_s']:.2f}, run-epochs {h['epochs'] / g['epochs']:.2f}, "
        f"wall {h['wall_s'] / g['wall_s']:.2f}",
        "",
        "| attribute | λ grid | λ halving |",
        "|---|---:|---:|",
        *[f"| {a}{' (planted)' if a in planted else ''} | {g['lam'][a]} | {h['lam'][a]} |" for a in g["lam"]],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the stores (base, grid, halving)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--append", metavar="FILE", help="append the result (markdown) to FILE")
    sys.exit(main_(p.parse_args()))

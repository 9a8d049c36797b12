"""The paper's protocol against its cheaper variants, side by side in one invocation, each in its own
fresh store, through ``aal-k8s pipeline`` (local backend, worker processes), on the synthetic data:

    paper       the default protocol: single, pairwise, multi, adversarial by λ grid
    halving     adversarial.lambda_search=halving
    packs       halving + executor.runs_per_job=4
    affinity    the affinity stage instead of pairwise (--partners-from affinity) + halving + packs

For each it prints the run-seconds per stage and in total (the runs' own time from their metrics
records, the stopped halving runs' rung records included: reduce's ``stage_seconds``), wall seconds
per stage (first worker start to last worker exit) and for the whole pipeline, worker processes
(= Kubernetes Jobs) per stage, the partner and λ each attribute gets (planted pairs marked) and the
final model set's mean val/test accuracy; then judges halving's cost and λ against the grid's and
whether the cheaper configurations find the planted partners and match the final accuracy.

    python benchmarks/bench_protocols.py --work /tmp/bench-protocols
    python benchmarks/bench_protocols.py --work /tmp/bench-protocols --set train.threads=1 \\
        --set executor.parallel=2 --set dataset.synthetic.n_train=1500 --append BENCHMARKS.md
    python benchmarks/bench_protocols.py --work /tmp/bp --only paper,affinity --set train.epochs=2
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import cli, commit, cpu  # noqa: E402

from aal_k8s.backends.local import LocalBackend  # noqa: E402
from aal_k8s.data.synthetic import PLANTED  # noqa: E402

HALVING = ["adversarial.lambda_search=halving"]
PACKS = [*HALVING, "executor.runs_per_job=4"]


@dataclass(frozen=True)
class Protocol:
    name: str
    label: str
    sets: tuple[str, ...] = ()
    stages: str = "paper"
    partners_from: str = "pairwise"


PROTOCOLS = [
    Protocol("paper", "(a) paper: λ grid"),
    Protocol("halving", "(b) halving", tuple(HALVING)),
    Protocol("packs", "(c) halving + runs_per_job 4", tuple(PACKS)),
    Protocol("affinity", "(d) affinity + halving + runs_per_job 4", tuple(PACKS), "single,multi,affinity,adversarial", "affinity"),
]

RUN_ORDER = ["paper", "packs", "affinity", "halving"]


@dataclass
class Workers:
    """Worker processes the local backend started, per stage, and the span they ran in."""

    procs: dict[str, int] = field(default_factory=dict)
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)

    def wall(self, stage: str) -> float:
        return self.last[stage] - self.first[stage]


def _count_workers(into: Workers):
    """Wrap the local backend's one-worker call (a run or a pack) to count and time it by stage:
    the pipeline's own output does not say how many processes it started."""
    original = LocalBackend._run_one

    def counted(self, pack, exp, threads, until_epoch=0):
        stage, t0 = pack[0].stage, time.perf_counter()
        try:
            return original(self, pack, exp, threads, until_epoch)
        finally:
            into.procs[stage] = into.procs.get(stage, 0) + 1
            into.first[stage] = min(into.first.get(stage, t0), t0)
            into.last[stage] = max(into.last.get(stage, 0.0), time.perf_counter())

    LocalBackend._run_one = counted
    return original


def run_protocol(p: Protocol, work: str, sets: list[str]) -> dict:
    store = os.path.join(work, p.name)
    shutil.rmtree(store, ignore_errors=True)
    workers = Workers()
    argv = ["pipeline", "--dataset", "synthetic", "--store", store, "--stages", p.stages, "--partners-from", p.partners_from,
            *[x for s in (*sets, *p.sets) for x in ("--set", s)], "-o", os.path.join(work, f"{p.name}-report.md")]  # fmt: skip
    original = _count_workers(workers)
    t0 = time.perf_counter()
    try:
        cli(argv, log=os.path.join(work, f"{p.name}.log"))
    finally:
        LocalBackend._run_one = original
    wall = time.perf_counter() - t0
    s = json.load(open(os.path.join(store, "synthetic", "reduce", "summary.json")))
    final = s["final"]
    return {
        "argv": argv,
        "wall_s": wall,
        "stage_s": s["stage_seconds"],
        "stage_wall_s": {st: workers.wall(st) for st in workers.procs},
        "procs": workers.procs,
        "partners": s["partners"],
        "lam": s["chosen_lambda"],
        "grid_val": {a: {k: r["val"] for k, r in runs.items()} for a, runs in s["adversarial"].items()},
        "val": sum(c["val"] for c in final.values()) / len(final),
        "test": sum(c["test"] for c in final.values()) / len(final),
        "n_val": s["eval_images"]["val"],
        "n_test": s["eval_images"]["test"],
    }


def _se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def judge(r: dict) -> list[str]:
    """The issue's targets, each with its figures and its verdict."""
    lines, planted = [], dict(PLANTED)
    # halving's cost and λ: from (b), else from (c), which takes the same decisions (a pack member
    # is bitwise the run alone on CPU) and splits a pack's seconds over its members
    paper, which = r.get("paper"), "halving" if "halving" in r else "packs"
    halv = r.get(which)
    if paper and halv and paper["stage_s"].get("adversarial"):
        g, h = paper["stage_s"]["adversarial"], halv["stage_s"].get("adversarial", 0.0)
        lines.append(f"- Halving ({which}) adversarial stage: {h:.1f} run-seconds against the grid's {g:.1f}: "
                     f"{h / g:.2f} of it, target at most 0.50: **{'met' if h <= g / 2 else 'missed'}**.")  # fmt: skip
        # Same λ, or one within noise: the grid trained every λ, so its summary holds the val of
        # halving's λ (a survivor is the grid run, same run id); within noise = less than one
        # standard error of an accuracy on the validation split below the grid's best.
        for a in sorted(set(paper["lam"]) & set(halv["lam"])):
            if paper["partners"].get(a) != halv["partners"].get(a):
                continue
            vals = paper["grid_val"][a]
            best, mine = vals[repr(paper["lam"][a])], vals[repr(halv["lam"][a])]
            se = _se(best, paper["n_val"])
            verdict = "same λ" if paper["lam"][a] == halv["lam"][a] else (
                "within noise" if best - mine <= se else "outside noise")  # fmt: skip
            mark = " (planted)" if planted.get(a) == paper["partners"][a] else ""
            lines.append(f"- λ for {a}{mark}: grid {paper['lam'][a]} (val {100 * best:.2f}), {which} {halv['lam'][a]} "
                         f"(its grid val {100 * mine:.2f}), one SE {100 * se:.2f} points: {verdict}.")  # fmt: skip
    if paper:
        se = _se(paper["test"], paper["n_test"])
        for name in ("halving", "packs", "affinity"):
            x = r.get(name)
            if not x:
                continue
            found = all(x["partners"].get(a) == b for a, b in PLANTED)
            dv, dt = x["val"] - paper["val"], x["test"] - paper["test"]
            lines.append(f"- {name}: planted partners {'found' if found else 'NOT found'}; final mean val {100 * dv:+.2f}, "
                         f"test {100 * dt:+.2f} points against the paper's (one SE of a test accuracy: {100 * se:.2f}): "
                         f"**{'matches' if abs(dt) <= se else 'does not match'}**; run-seconds "
                         f"{sum(x['stage_s'].values()) / sum(paper['stage_s'].values()):.2f} of the paper's, "
                         f"wall {x['wall_s'] / paper['wall_s']:.2f}.")  # fmt: skip
    return lines


def render(r: dict, sets: list[str], meta: dict) -> str:
    stages = [s for s in ("single", "pairwise", "multi", "affinity", "adversarial") if any(s in x["stage_s"] for x in r.values())]
    planted = dict(PLANTED)
    head = [
        f"### {meta['date']}, commit {meta['commit']}, CPU: {meta['cpu']}, {meta['threads']} threads (shared), torch {meta['torch']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Settings: {' '.join(sets) or 'synthetic defaults'}; val {next(iter(r.values()))['n_val']} images, "
        f"test {next(iter(r.values()))['n_test']}. Each cell of a stage: run-seconds / wall s / worker processes (= Jobs).",
        "",
        "| configuration | " + " | ".join(stages) + " | run-s total | wall s | processes | final val | final test |",
        "|---|" + "---:|" * (len(stages) + 5),
    ]
    for p in PROTOCOLS:
        x = r.get(p.name)
        if not x:
            continue
        cells = [f"{x['stage_s'][s]:.1f} / {x['stage_wall_s'].get(s, 0):.0f} / {x['procs'].get(s, 0)}" if s in x["stage_s"] else "–" for s in stages]
        head.append(f"| {p.label} | " + " | ".join(cells) + f" | {sum(x['stage_s'].values()):.1f} | {x['wall_s']:.0f} | "
                    f"{sum(x['procs'].values())} | {100 * x['val']:.2f} | {100 * x['test']:.2f} |")  # fmt: skip
    names = [p for p in PROTOCOLS if p.name in r]
    attrs = list(next(iter(r.values()))["partners"])
    head += ["", "Partner ← and λ per attribute (✓: the planted partner):", "",
             "| attribute | " + " | ".join(p.name for p in names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
    for a in attrs:
        cells = []
        for p in names:
            b, lam = r[p.name]["partners"].get(a), r[p.name]["lam"].get(a)
            cells.append("none" if not b else f"{b}{' ✓' if planted.get(a) == b else ''}, λ {lam}")
        head.append(f"| {a}{' (planted: ' + planted[a] + ')' if a in planted else ''} | " + " | ".join(cells) + " |")
    return "\n".join([*head, "", *judge(r), ""])


def main_(args) -> int:
    import torch

    meta = {  # taken before the runs: the code measured is the code at the start
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "cpu": cpu(),
        "threads": os.cpu_count(),
        "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv),
    }
    if args.render:  # a saved results.json (e.g. of an invocation stopped before its last configuration)
        saved = json.load(open(args.render))
        words = saved["meta"]["command"].split()
        sets = saved.get("sets") or [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--set"]
        return _emit(render(saved["results"], sets, saved["meta"]), args.append)
    only = args.only.split(",") if args.only else [p.name for p in PROTOCOLS]
    unknown = set(only) - {p.name for p in PROTOCOLS}
    if unknown:
        sys.exit(f"--only: unknown configuration(s) {', '.join(sorted(unknown))}; known: {', '.join(p.name for p in PROTOCOLS)}")
    os.makedirs(args.work, exist_ok=True)
    results = {}
    # the paper first (every judgement compares with it), the costly grid-sized halving run last
    for p in sorted(PROTOCOLS, key=lambda p: RUN_ORDER.index(p.name)):
        if p.name in only:
            results[p.name] = run_protocol(p, args.work, args.set)
            print(f"{p.name}: done in {results[p.name]['wall_s']:.0f} s", file=sys.stderr, flush=True)
            with open(os.path.join(args.work, "results.json"), "w") as f:  # what finished, if a later one fails
                json.dump({"meta": meta, "sets": args.set, "results": results}, f, indent=1)
    return _emit(render(results, args.set, meta), args.append)


def _emit(text: str, append: str | None) -> int:
    print(text)
    if append:
        with open(append, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="folder for the stores, one per configuration (replaced), and results.json")
    ap.add_argument("--render", metavar="RESULTS_JSON", help="only print (and --append) the tables of a saved results.json")
    ap.add_argument("--only", metavar="A,B", help="these configurations only (paper, halving, packs, affinity)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every configuration (repeatable)")
    ap.add_argument("--append", metavar="FILE", help="append the result (markdown) to FILE")
    a = ap.parse_args()
    if not (a.work or a.render):
        ap.error("--work or --render is required")
    sys.exit(main_(a))

"""Prove a refactor changed nothing: the synthetic pipeline's outputs, byte for byte.

Two checks against a golden store made by the code before the change (``make``):

``reduce``   copies the golden store, removes its reduce/, final/ and report/ folders and runs the
             pipeline again with the code under test: every run is committed, so nothing trains and
             reduce + final + report rebuild from the same runs. summary.json, the reduce CSVs,
             report.md, report.html and every final model file must be byte-identical; the final
             manifest too, except its creation time and the seal that covers it.
``retrain``  trains the small synthetic protocol (all stages) from scratch with the code under test
             and compares every committed run with the golden one: spec, weights and predictions
             byte for byte, metrics without wall-clock values (epoch seconds, timings, commit time,
             attempt name, and the record seal over them); then the reduce summary and the
             report without their timing sections.

Usage:
    python scripts/same_outputs.py make    --python OLD/.venv/bin/python --golden /tmp/golden
    python scripts/same_outputs.py reduce  --python NEW/.venv/bin/python --golden /tmp/golden
    python scripts/same_outputs.py retrain --python NEW/.venv/bin/python --golden /tmp/golden

``make`` trains both golden stores: the default synthetic protocol (``full``, for ``reduce``; about
ten minutes on two cores) and the small one (``small``, for ``retrain``; a few minutes).
Exit 0 when identical, 1 with the first differences otherwise.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EXP = "synthetic"
BASE_ARGS = ["pipeline", "--dataset", "synthetic", "--stages", "all", "--set", "train.threads=1"]
# Small enough to train in a few minutes, large enough that the planted partners are found, so the
# adversarial stage and every ablation train too.
SMALL = [
    "dataset.synthetic.n_train=1200", "dataset.synthetic.n_val=400", "dataset.synthetic.n_test=400",
    "train.epochs=3", "train.lr_decay_epoch=2",
]  # fmt: skip
# Wall-clock values in a run's metrics.json (and the seal that covers them).
RUN_VOLATILE = ("timings", "committed_at", "attempt", "record_sha256", "environment")


def pipeline(python: str, store: Path, report: Path, small: bool) -> None:
    argv = [python, "-m", "aal_k8s", *BASE_ARGS, "--store", str(store), "-o", str(report)]
    for s in SMALL if small else ():
        argv += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"pipeline failed ({' '.join(argv)}):\n{r.stderr[-3000:]}")


def diff_text(name: str, old: str, new: str, problems: list[str]) -> None:
    if old != new:
        lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), "golden", "new", lineterm="", n=1))
        problems.append(f"{name} differs:\n" + "\n".join(lines[:40]))


# The code version (``0.1.0 (git 1a2b3c4d5e, modified)``) names the commit that wrote a file: it
# differs by definition between the golden code and the code under test, so texts are compared with
# it replaced (and without the seals, which cover it). Everything else must match byte for byte.
CODE_VERSION = re.compile(r"\(git [0-9a-f]{7,40}(, modified)?\)")
SEALS = re.compile(r'^\s*"(summary|manifest|record)_sha256": "[0-9a-f]{64}",?\n', re.M)


def without_code_version(text: str) -> str:
    return SEALS.sub("", CODE_VERSION.sub("(git <commit>)", text))


def diff_bytes(name: str, old: Path, new: Path, problems: list[str]) -> None:
    if not new.exists():
        problems.append(f"{name}: missing")
    elif old.read_bytes() != new.read_bytes():
        try:
            old_text, new_text = old.read_text(), new.read_text()
        except UnicodeDecodeError:
            problems.append(f"{name}: bytes differ")
            return
        if without_code_version(old_text) != without_code_version(new_text):
            diff_text(name, old_text, new_text, problems)


def manifest_without_clock(path: Path) -> str:
    m = json.loads(path.read_text())
    m.pop("created_at", None), m.pop("manifest_sha256", None)
    return json.dumps(m, indent=1, sort_keys=True)


def compare_reduced(golden: Path, new: Path, problems: list[str], timed: bool) -> None:
    """The reduce summary/CSVs, the final set and the report. ``timed``: wall-clock values are the
    same in both (same runs), so compare everything byte for byte; otherwise without them."""
    g, n = golden / EXP, new / EXP
    for rel in ("reduce/pairwise_matrix.csv", "reduce/final.csv"):
        diff_bytes(rel, g / rel, n / rel, problems)
    if timed:
        diff_bytes("reduce/summary.json", g / "reduce/summary.json", n / "reduce/summary.json", problems)
        for rel in ("report/report.md", "report/report.html"):
            diff_bytes(rel, g / rel, n / rel, problems)
    else:
        def timeless(p: Path) -> str:
            s = json.loads(p.read_text())
            s.pop("stage_seconds", None), s.pop("summary_sha256", None)
            for k in ("first_commit", "last_commit"):
                s.get("provenance", {}).pop(k, None)
            return without_code_version(json.dumps(s, indent=1, sort_keys=True))

        diff_text("reduce/summary.json (timeless)", timeless(g / "reduce/summary.json"), timeless(n / "reduce/summary.json"), problems)
        diff_text("report/report.md (without timing sections)", untimed(g / "report/report.md"), untimed(n / "report/report.md"), problems)
    gm, nm = g / "final/manifest.json", n / "final/manifest.json"
    if gm.exists() or nm.exists():
        if not nm.exists():
            problems.append("final/manifest.json: missing")
            return
        diff_text("final/manifest.json (without created_at and seal)", manifest_without_clock(gm), manifest_without_clock(nm), problems)
        for m in json.loads(gm.read_text())["models"]:
            diff_bytes(f"final/{m['file']}", g / "final" / m["file"], n / "final" / m["file"], problems)
    for extra in ("final/MODEL_CARD.md",):
        if (g / extra).exists():
            diff_text(extra + " (without dates and code version)", dateless(g / extra), dateless(n / extra), problems)


def dateless(p: Path) -> str:
    """The model card minus its dates and the code version that built it (the runs' code versions
    are in the summary, compared byte for byte)."""
    if not p.exists():
        return "(missing)"
    return "\n".join(x for x in p.read_text().splitlines() if "reated" not in x and not x.startswith(("- Code:", "- Runs committed:")))


def untimed(p: Path) -> str:
    """The report minus the sections showing run-seconds and the provenance paragraph (commit times)."""
    sections = p.read_text().split("\n## ")
    kept = "\n## ".join(s for s in sections if not s.startswith(("Compute per stage", "Partner discovery")))
    return "\n\n".join(x for x in kept.split("\n\n") if not x.startswith("**Provenance.**"))


def same_tensors(a: Path, b: Path) -> bool:
    """Two safetensors files hold the same metadata and the same tensors, bit for bit."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()):
            return False
        return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def compare_runs(golden: Path, new: Path, problems: list[str]) -> None:
    g_runs, n_runs = golden / EXP / "runs", new / EXP / "runs"
    g_ids = {p.name for p in g_runs.iterdir() if (p / "metrics.json").exists()}
    n_ids = {p.name for p in n_runs.iterdir() if (p / "metrics.json").exists()} if n_runs.exists() else set()
    if g_ids != n_ids:
        problems.append(f"committed run ids differ: only golden {sorted(g_ids - n_ids)}, only new {sorted(n_ids - g_ids)}")
    for rid in sorted(g_ids & n_ids):
        diff_bytes(f"{rid}/spec.json", g_runs / rid / "spec.json", n_runs / rid / "spec.json", problems)
        gm, nm = (json.loads((r / rid / "metrics.json").read_text()) for r in (g_runs, n_runs))
        for name, art in gm["artifacts"].items():
            if art["sha256"] == nm["artifacts"].get(name, {}).get("sha256"):
                continue
            if name == "predictions.safetensors" and same_tensors(golden / EXP / art["key"], new / EXP / nm["artifacts"][name]["key"]):
                continue  # safetensors writes its metadata map in a per-process order: same content
            problems.append(f"{rid}: {name} differs (sha256)")

        def clean(m: dict) -> str:
            m = {k: v for k, v in m.items() if k not in RUN_VOLATILE and k != "artifacts"}
            m["history"] = [{k: v for k, v in e.items() if k != "seconds"} for e in m.get("history", [])]
            return json.dumps(m, indent=1, sort_keys=True)

        diff_text(f"{rid}/metrics.json (without wall clock)", clean(gm), clean(nm), problems)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("check", choices=("make", "reduce", "retrain"))
    ap.add_argument("--python", required=True, help="the interpreter whose aal_k8s is under test")
    ap.add_argument("--golden", type=Path, default=Path("/tmp/aal-golden"))
    ap.add_argument("--keep", action="store_true", help="keep the new store (its path is printed)")
    args = ap.parse_args()
    problems: list[str] = []
    if args.check == "make":
        for name, small in (("small", True), ("full", False)):
            out = args.golden / name
            if (out / "store" / EXP / "reduce").exists():
                print(f"{out}: exists, kept")
                continue
            pipeline(args.python, out / "store", out / "report.md", small)
            print(f"golden {name}: {out}")
        return 0
    work = Path(tempfile.mkdtemp(prefix=f"aal-same-{args.check}-"))
    try:
        if args.check == "reduce":
            golden = args.golden / "full" / "store"
            shutil.copytree(golden, work / "store")
            for sub in ("reduce", "final", "report"):
                shutil.rmtree(work / "store" / EXP / sub, ignore_errors=True)
            pipeline(args.python, work / "store", work / "report.md", small=False)
            compare_reduced(golden, work / "store", problems, timed=True)
        else:
            golden = args.golden / "small" / "store"
            pipeline(args.python, work / "store", work / "report.md", small=True)
            compare_runs(golden, work / "store", problems)
            compare_reduced(golden, work / "store", problems, timed=False)
    finally:
        if args.keep:
            print(f"new store: {work / 'store'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for p in problems:
        print(p)
    print(f"{args.check}: {'IDENTICAL' if not problems else f'{len(problems)} difference(s)'} (golden {golden})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

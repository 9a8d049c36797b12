"""The runs themselves: lambda by successive halving, compute per stage, the runs still missing."""

from __future__ import annotations

from aal_k8s.report.analysis import Analysis
from aal_k8s.report.document import Bullets, Heading, Para, Table
from aal_k8s.report.sections.common import opt, pct
from aal_k8s.runspec import STAGES


def halving(a: Analysis) -> list:
    """Successive halving's lambda curves: each lambda's rung scores, and where it was stopped
    (nothing under grid search: the report stays as it was)."""
    out = a.out
    if not out.halving:
        return []
    rows = []
    for x in out.attributes:
        h = out.halving.get(x)
        if not h:
            continue
        curve: dict[float, list[str]] = {}
        for d in h["decisions"]:
            for e in d["entrants"]:
                mark = "" if e["lam"] in d["survivors"] else " (stopped)"
                curve.setdefault(e["lam"], []).append(f"e{d['epoch']}: {pct(e['score'])}{mark}")
        chosen = out.chosen_lambda.get(x)
        for lam, points in curve.items():
            final = out.adversarial.get(x, {}).get(repr(lam))
            end = pct(final["val"]) if final else ("" if h["survivors"] is None or lam not in h["survivors"] else "running")
            rows.append([x, f"{lam:g}" + (" (chosen)" if lam == chosen else ""), "; ".join(points), end])
    first = next(iter(out.halving.values()))
    return [
        Heading(2, "Lambda by successive halving"),
        Para(
            f"Rungs at epochs {', '.join(map(str, first['rungs']))}, eta {first['eta']}: every lambda trains to the "
            "first rung, the best 1/eta on validation (mean primary val accuracy of the best epoch so far) go on "
            "from their checkpoint; the last rung's survivors train all epochs, and lambda is chosen among them."
        ),
        Table(["Attribute", "Lambda", "Val at each rung (%)", "Final val (%)"], "lrll", rows),
    ]


def compute(a: Analysis) -> list:
    out = a.out
    stages = [s for s in STAGES if s in out.stage_seconds or s in out.stage_runs]
    stages += sorted(s for s in {*out.stage_seconds, *out.stage_runs} if s not in STAGES)
    if not stages:
        return []
    yard = a.yardstick
    rows = []
    for s in stages:
        sec = out.stage_seconds.get(s)
        rows.append([s, opt(out.stage_runs.get(s), "d"), opt(sec, ".0f"), "n/a" if sec is None or not yard else f"{sec / yard:.1f}"])
    total = sum(out.stage_seconds.values())
    rows.append(["**Total**", str(sum(out.stage_runs.values())), f"{total:.0f}", "n/a" if not yard else f"{total / yard:.1f}"])
    return [
        Heading(2, "Compute per stage"),
        Para("Run-seconds: the sum of the committed runs' total seconds; one ordinary run = the multi-task run."),
        Table(["Stage", "Committed runs", "Run-seconds", "× one ordinary run"], "lrrr", rows),
    ]


def missing(a: Analysis) -> list:
    out = a.out
    blocks: list = [Heading(2, "Missing runs")]
    by_stage = {s: ids for s, ids in out.missing.items() if ids}
    # the stages with a committed or a missing run: a stage never planned (e.g. seeds with one
    # seed, the ablations of a paper-only pipeline) has no row
    stages = [s for s in STAGES if s in out.stage_runs or s in by_stage] + sorted(s for s in by_stage if s not in STAGES)
    rows = [[s, opt(out.stage_runs.get(s), "d", ""), str(len(by_stage.get(s, [])))] for s in stages]
    blocks.append(Table(["Stage", "Committed", "Missing"], "lrr", rows))
    if not by_stage:
        return blocks + [Para("None: every planned run is committed.")]
    items = []
    for stage in stages:
        for rid in by_stage.get(stage, []):
            why = out.failed.get(rid)
            items.append(f"{stage}: `{rid}`" + (f" (failed: {why})" if why else " (not committed)"))
    return blocks + [Bullets(items)]

"""The Markdown report: the paper's Table 3 columns from the reduce output.

Sin = single-task, Mul = trained together with the most negative partner, Adv = adversarial with
that partner at the lambda chosen on validation. Accuracies in percent, validation split (as the
paper's Table 3) with the test split beside it. The output depends only on the reduce output, so
re-running it on the same results gives the same bytes.
"""

from __future__ import annotations

from aal_k8s.reduce import ReduceOutput


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _diff(x: float | None, y: float | None) -> str:
    return "" if x is None or y is None else f"{100 * (x - y):+.2f}"


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals and len(vals) == len(xs) else None


def table_rows(out: ReduceOutput, split: str) -> list[dict]:
    """One dict per attribute: Sin/Mul/Adv on ``split`` ("val" or "test")."""
    single = out.single_val if split == "val" else out.single_test
    pair = out.pair_val if split == "val" else out.pair_test
    rows = []
    for i, a in enumerate(out.attributes, 1):
        partner = out.partners.get(a)
        lam = out.chosen_lambda.get(a)
        adv = out.adversarial.get(a, {}).get(repr(lam)) if lam is not None else None
        sin = single.get(a)
        rows.append(
            {
                "index": i,
                "name": a,
                "partner": partner,
                "partner_index": out.attributes.index(partner) + 1 if partner else None,
                "sin": sin,
                # No partner: nothing to pair with or against, so Mul and Adv equal single-task.
                "mul": pair.get(a, {}).get(partner) if partner else sin,
                "adv": (adv[split] if adv else None) if partner else sin,
                "lam": lam,
                "final": out.final[a].source if a in out.final else None,
            }
        )
    return rows


def render_table(rows: list[dict]) -> list[str]:
    lines = [
        "| # | Attribute | Neg. partner | Sin | Mul | Adv | Mul−Sin | Adv−Sin | Adv−Mul | λ | Final |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        partner = f"{r['partner_index']} ({r['partner']})" if r["partner"] else "none"
        lam = "" if r["lam"] is None else f"{r['lam']:g}"
        lines.append(
            f"| {r['index']} | {r['name']} | {partner} | {_pct(r['sin'])} | {_pct(r['mul'])} | "
            f"{_pct(r['adv'])} | {_diff(r['mul'], r['sin'])} | {_diff(r['adv'], r['sin'])} | "
            f"{_diff(r['adv'], r['mul'])} | {lam} | {r['final'] or ''} |"
        )
    means = {k: _mean([r[k] for r in rows]) for k in ("sin", "mul", "adv")}
    lines.append(
        f"| | **Mean** | | {_pct(means['sin'])} | {_pct(means['mul'])} | {_pct(means['adv'])} | "
        f"{_diff(means['mul'], means['sin'])} | {_diff(means['adv'], means['sin'])} | "
        f"{_diff(means['adv'], means['mul'])} | | |"
    )
    return lines


def render_markdown(out: ReduceOutput, experiment: str) -> str:
    lines = [f"# AAL report: {experiment} ({out.dataset})", ""]
    for split, title in (("val", "Validation"), ("test", "Test")):
        rows = table_rows(out, split)
        lines += [f"## {title} accuracy (%), the paper's Table 3 columns", ""]
        lines += render_table(rows)
        improved = sum(1 for r in rows if r["adv"] is not None and r["sin"] is not None and r["adv"] > r["sin"])
        over_mul = sum(1 for r in rows if r["adv"] is not None and r["mul"] is not None and r["adv"] > r["mul"])
        lines += [
            "",
            f"Adversarial improved over single-task on {improved} of {len(rows)} attributes, "
            f"over multi-task with the partner on {over_mul} of {len(rows)}.",
            "",
        ]
    if out.multi_val:
        lines += ["## Multi-task over all attributes (%)", "", "| # | Attribute | Val | Test |", "|---:|---|---:|---:|"]
        for i, a in enumerate(out.attributes, 1):
            lines.append(f"| {i} | {a} | {_pct(out.multi_val.get(a))} | {_pct(out.multi_test.get(a))} |")
        lines.append("")
    if out.final:
        lines += ["## Final model set", "", "| # | Attribute | Source | Partner | λ | Val | Test |", "|---:|---|---|---|---:|---:|---:|"]
        for i, a in enumerate(out.attributes, 1):
            c = out.final.get(a)
            if c:
                lam = "" if c.lam is None else f"{c.lam:g}"
                lines.append(f"| {i} | {a} | {c.source} | {c.partner or ''} | {lam} | {_pct(c.val)} | {_pct(c.test)} |")
        lines.append("")
    missing = {s: ids for s, ids in out.missing.items() if ids}
    lines += ["## Missing runs", ""]
    if not missing:
        lines.append("None: every planned run is committed.")
    for stage, ids in sorted(missing.items()):
        for rid in ids:
            why = out.failed.get(rid)
            lines.append(f"- {stage}: `{rid}`" + (f" (failed: {why})" if why else " (not committed)"))
    lines.append("")
    return "\n".join(lines)

"""The report: Markdown plus one self-contained HTML file, from the reduce output alone.

Sin = single-task, Mul = trained together with the most negative partner, Adv = adversarial with
that partner at the lambda chosen on validation. Accuracies in percent. Sections: the paper's
Table 3 per attribute (val and test), Figure 2 (bars), the final model set, multi-task over all
attributes, the pairwise matrix (Table 4, heatmap and CSV), label correlation against negative
transfer (Figure 3), the ablations (Table 1), the published CelebA numbers (Table 2, CelebA only),
significance (appendix A.1), partner discovery methods compared, compute per stage and the runs
still missing.

The output depends only on the reduce output (no timestamps, deterministic figures), so re-running
it on the same results gives the same bytes.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field

from scipy.stats import spearmanr

from aal_k8s import paper
from aal_k8s.figures import affinity_matrix, pearson, relative_matrix, render_figures, scatter_points
from aal_k8s.reduce import ReduceOutput, pairwise_cells
from aal_k8s.runspec import ABLATION_STAGES, STAGES
from aal_k8s.significance import ALPHA, BOOTSTRAP_RESAMPLES, z_test

METHODS = ("pairwise", "affinity", "correlation")  # partner discovery methods, in column order
FIGURE_DIR = "figures"
RELATIVE_CSV = "pairwise_relative.csv"
ACCURACY_CSV = "pairwise_accuracy.csv"


# -- number formatting -------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _diff(x: float | None, y: float | None) -> str:
    return "" if x is None or y is None else f"{100 * (x - y):+.2f}"


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals and len(vals) == len(xs) else None


def _opt(x: float | None, fmt: str, none: str = "n/a") -> str:
    return none if x is None else format(x, fmt)


# -- the paper's Table 3 -----------------------------------------------------------------------------


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


def _partner_cell(out: ReduceOutput, partner: str | None) -> str:
    if partner is None:
        return "none"
    i = out.attributes.index(partner) + 1 if partner in out.attributes else "?"
    return f"{i} ({partner})"


NOT_SIGNIFICANT = "†"  # marks a partner whose drop McNemar's test does not find significant


def drop_significant(out: ReduceOutput, a: str) -> bool | None:
    """Whether a's partner lowers it significantly on validation (McNemar, p < ALPHA; a partner's
    drop is above zero, so more images are lost than gained); None when untested (no partner, or
    runs without per-image predictions)."""
    t = out.partner_tests.get(a, {}).get(out.partners.get(a) or "")
    return None if t is None else t["p"] < ALPHA


def table3(out: ReduceOutput, split: str) -> tuple[Table, dict[str, int]]:
    """The per-attribute table with its Mean row and the improvement counts."""
    rows = table_rows(out, split)
    body = []
    for r in rows:
        partner = _partner_cell(out, r["partner"])
        if drop_significant(out, r["name"]) is False:
            partner += f" {NOT_SIGNIFICANT}"
        lam = "" if r["lam"] is None else f"{r['lam']:g}"
        body.append(
            [
                str(r["index"]), r["name"], partner, _pct(r["sin"]), _pct(r["mul"]), _pct(r["adv"]),
                _diff(r["mul"], r["sin"]), _diff(r["adv"], r["sin"]), _diff(r["adv"], r["mul"]), lam, r["final"] or "",
            ]
        )  # fmt: skip
    means = {k: _mean([r[k] for r in rows]) for k in ("sin", "mul", "adv")}
    body.append(
        [
            "", "**Mean**", "", _pct(means["sin"]), _pct(means["mul"]), _pct(means["adv"]),
            _diff(means["mul"], means["sin"]), _diff(means["adv"], means["sin"]), _diff(means["adv"], means["mul"]), "", "",
        ]
    )  # fmt: skip
    header = ["#", "Attribute", "Neg. partner", "Sin", "Mul", "Adv", "Mul−Sin", "Adv−Sin", "Adv−Mul", "λ", "Final"]
    counts = {
        "over_single": sum(1 for r in rows if r["adv"] is not None and r["sin"] is not None and r["adv"] > r["sin"]),
        "over_multi": sum(1 for r in rows if r["adv"] is not None and r["mul"] is not None and r["adv"] > r["mul"]),
        "total": len(rows),
    }
    return Table(header, "rllrrrrrrrl", body), counts


# -- Table 1: ablations ------------------------------------------------------------------------------


@dataclass
class Row:
    """One method's mean accuracy over all M attributes (None when a run is missing)."""

    key: str
    label: str
    val: float | None
    test: float | None
    status: str = ""  # "" when complete, else "not run" or "missing (n of k runs not committed)"


def _mean_row(key: str, label: str, out: ReduceOutput, value, needs_run, entries: bool, partners_known: bool) -> Row:
    """``value(a, split)`` -> accuracy or None; ``needs_run(a)`` -> whether the stage trains a run
    for a (else a counts with its single-task accuracy)."""
    attrs = out.attributes
    needed = [a for a in attrs if needs_run(a)]
    if not entries and (needed or not partners_known):
        return Row(key, label, None, None, "not run")
    means, missing = {}, set()
    for split in ("val", "test"):
        single = out.single_val if split == "val" else out.single_test
        vals = []
        for a in attrs:
            v = value(a, split)
            if v is None and not needs_run(a):
                v = single.get(a)
            if v is None:
                missing.add(a)
            vals.append(v)
        means[split] = _mean(vals)
    if missing:
        n_runs = len(needed) or len(attrs)
        return Row(key, label, None, None, f"missing ({len(missing)} of {n_runs} runs not committed)")
    return Row(key, label, means["val"], means["test"])


ABLATION_LABELS = {
    "single": "Single task per attribute",
    "multi_all": "Multi-task with all attributes",
    "adversarial": "Pairwise adversarial (gradient reversal)",
    "gan": "Pairwise adversarial with GAN loss",
    "wgan": "Pairwise adversarial with Wasserstein-GAN loss",
    "shared": "Pairwise adversarial with shared CNN representation",
    "group": "Multiple adversarial attributes",
}


def ablation_rows(out: ReduceOutput) -> list[Row]:
    """The paper's Table 1 rows, in its order."""
    known = bool(out.partners)

    def split_dict(d_val, d_test):
        return lambda a, split: (d_val if split == "val" else d_test).get(a)

    rows = [
        _mean_row("single", ABLATION_LABELS["single"], out, split_dict(out.single_val, out.single_test),
                  lambda a: True, bool(out.single_val), True),
        _mean_row("multi_all", ABLATION_LABELS["multi_all"], out, split_dict(out.multi_val, out.multi_test),
                  lambda a: True, bool(out.multi_val), True),
    ]  # fmt: skip
    adv = {split: {r["name"]: r["adv"] for r in table_rows(out, split)} for split in ("val", "test")}
    has_partner = lambda a: out.partners.get(a) is not None  # noqa: E731
    rows.append(
        _mean_row("adversarial", ABLATION_LABELS["adversarial"], out,
                  lambda a, split: adv[split][a] if has_partner(a) else None,
                  has_partner, bool(out.adversarial), known)
    )  # fmt: skip
    for stage in ABLATION_STAGES:
        entries = out.ablations.get(stage, {})
        needs = (lambda a: bool(out.group_partners.get(a))) if stage == "group" else has_partner
        stage_known = bool(out.group_partners) if stage == "group" else known
        rows.append(
            _mean_row(stage, ABLATION_LABELS[stage], out,
                      lambda a, split, e=entries: e[a][split] if a in e else None,
                      needs, bool(entries), stage_known)
        )  # fmt: skip
    return rows


# -- significance ------------------------------------------------------------------------------------


def ours(out: ReduceOutput) -> tuple[str, float | None, float | None]:
    """Our method's mean val/test accuracy: the final model set when it covers every attribute,
    else the Adv column (chosen-lambda adversarial run, single-task where there is no partner)."""
    if out.attributes and all(a in out.final for a in out.attributes):
        vals = [out.final[a].val for a in out.attributes]
        tests = [out.final[a].test for a in out.attributes]
        return "final model set", _mean(vals), _mean(tests)
    row = next(r for r in ablation_rows(out) if r.key == "adversarial")
    return "Adv column (no final model set yet)", row.val, row.test


def baselines(out: ReduceOutput) -> list[Row]:
    """Single, multi with the partner (Mul column), multi over all attributes, every ablation row
    with a value."""
    rows = ablation_rows(out)
    mul = {split: _mean([r["mul"] for r in table_rows(out, split)]) for split in ("val", "test")}
    result = [rows[0]]
    if mul["val"] is not None or mul["test"] is not None:
        result.append(Row("multi_partner", "Multi-task with the most negative partner (Mul)", mul["val"], mul["test"]))
    result.append(rows[1])
    result += rows[2:]
    return [r for r in result if r.val is not None or r.test is not None]


def significance_rows(out: ReduceOutput) -> list[dict]:
    """One dict per (split, baseline): P1, P0, N, z, p, significant."""
    _, p1_val, p1_test = ours(out)
    m = len(out.attributes)
    rows = []
    for split, p1 in (("val", p1_val), ("test", p1_test)):
        images = out.eval_images.get(split)
        n = images * m if images else None
        for b in baselines(out):
            if b.key in out.final_same_as:
                continue  # the final set compared with itself
            p0 = b.val if split == "val" else b.test
            if p1 is None or p0 is None:
                continue
            z, p = z_test(p1, p0, n) if n else (None, None)
            rows.append({"split": split, "baseline": b.label, "key": b.key, "p1": p1, "p0": p0, "n": n, "z": z, "p": p})
    return rows


def _p_text(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.6f}" if p >= 1e-6 else f"{p:.1e}"


def _significant_text(z: float | None, p: float | None) -> str:
    if p is None or z is None:
        return "n/a"
    if p >= ALPHA:
        return "no"
    return "yes" if z > 0 else "yes (worse)"


# -- partner discovery comparison --------------------------------------------------------------------


def partner_sources(out: ReduceOutput) -> dict[str, dict[str, str | None]]:
    """Each method's partners; the planning method's are ``out.partners`` if not listed."""
    src = {m: dict(p) for m, p in out.partner_sources.items()}
    if out.partners and out.partners_from not in src:
        src[out.partners_from] = dict(out.partners)
    return src


def method_order(sources: dict) -> list[str]:
    return [m for m in METHODS if m in sources] + sorted(m for m in sources if m not in METHODS)


def method_scores(out: ReduceOutput, method: str, a: str) -> dict[str, float]:
    """The row of attribute ``a`` as a method scores its partners, higher = better for a (less
    negative transfer):

    * pairwise: acc[a][b] - single[a] (measured);
    * affinity: Z(b -> a), > 0 when a step on b's loss lowers a's loss;
    * correlation: -|r(a, b)|, a strongly correlated label (either sign) predicted more harmful.
    """
    others = [b for b in out.attributes if b != a]
    if method == "pairwise":
        single, row = out.single_val.get(a), out.pair_val.get(a, {})
        return {} if single is None else {b: row[b] - single for b in others if b in row}
    if method == "affinity":
        row = out.affinity.get(a, {})
        return {b: row[b] for b in others if b in row}
    if method == "correlation":
        row = out.label_corr.get(a, {})
        return {b: -abs(row[b]) for b in others if b in row}
    return {}


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho, or None with fewer than 3 points or a constant row."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rho = float(spearmanr(xs, ys).statistic)
    return rho if math.isfinite(rho) else None


def method_spearman(out: ReduceOutput, method: str, a: str) -> float | None:
    """Rank agreement of ``method``'s row of ``a`` with the pairwise row (common partners only)."""
    ref, row = method_scores(out, "pairwise", a), method_scores(out, method, a)
    common = [b for b in out.attributes if b in ref and b in row]
    return spearman([row[b] for b in common], [ref[b] for b in common])


def method_adversarial_row(out: ReduceOutput, method: str, partners: dict[str, str | None]) -> Row:
    """Mean val/test of the adversarial models trained with ``method``'s partners (single-task
    where the method finds none)."""
    runs = out.method_adversarial.get(method)
    if runs is None and method == out.partners_from:
        adv = {split: {r["name"]: r["adv"] for r in table_rows(out, split)} for split in ("val", "test")}
        runs = {a: {"val": adv["val"][a], "test": adv["test"][a]} for a in out.attributes if adv["val"][a] is not None}
    runs = runs or {}
    needs = lambda a: partners.get(a) is not None  # noqa: E731
    row = _mean_row(
        method, method, out,
        lambda a, split: runs[a][split] if a in runs and needs(a) else None,
        needs, bool(runs), bool(partners),
    )  # fmt: skip
    if row.status.startswith("missing") and method != out.partners_from and not out.missing.get("adversarial"):
        # the runs it has are another method's (same partner); its own were never submitted (reduce
        # lists submitted runs that did not commit)
        row.status = "not run"
    return row


def comparison(out: ReduceOutput) -> dict | None:
    """The numbers of the partner discovery section, or None with fewer than two methods."""
    sources = partner_sources(out)
    if len(sources) < 2:
        return None
    methods = method_order(sources)
    m = len(out.attributes)
    ref = sources.get("pairwise")
    per_attr = []
    for i, a in enumerate(out.attributes, 1):
        per_attr.append(
            {
                "index": i,
                "name": a,
                "partners": {meth: sources[meth].get(a, "?") for meth in methods},
                "rho": {meth: method_spearman(out, meth, a) for meth in methods if meth != "pairwise"},
            }
        )
    multi_s, multi_n = out.stage_seconds.get("multi"), out.stage_runs.get("multi")
    yardstick = multi_s / multi_n if multi_s and multi_n else None
    summary = []
    for meth in methods:
        agree = None
        if ref is not None and meth != "pairwise":
            agree = sum(1 for a in out.attributes if sources[meth].get(a, "?") == ref.get(a, "?") != "?")
        rhos = [r["rho"].get(meth) for r in per_attr if r["rho"].get(meth) is not None]
        if meth == "correlation":
            runs, seconds = 0, 0.0
        else:
            runs, seconds = out.stage_runs.get(meth), out.stage_seconds.get(meth)
        summary.append(
            {
                "method": meth,
                "agreement": agree,
                "rho_mean": sum(rhos) / len(rhos) if rhos else None,
                "rho_n": len(rhos),
                "adversarial": method_adversarial_row(out, meth, sources[meth]),
                "runs": runs,
                "seconds": seconds,
                "ratio": None if seconds is None or not yardstick else seconds / yardstick,
            }
        )
    return {"methods": methods, "per_attr": per_attr, "summary": summary, "m": m, "yardstick": yardstick}


# -- CSVs --------------------------------------------------------------------------------------------


def _matrix_csv(out: ReduceOutput, cells) -> str:
    lines = [",".join(["attribute", *out.attributes])]
    for a, row in zip(out.attributes, cells):
        lines.append(",".join([a, *("" if c is None else f"{c:.4f}" for c in row)]))
    return "\n".join(lines) + "\n"


def relative_csv(out: ReduceOutput) -> str:
    """acc[a][b] - single[a] in percentage points; diagonal and missing runs empty."""
    return _matrix_csv(out, relative_matrix(out))


def accuracy_csv(out: ReduceOutput) -> str:
    """The paper's Table 4: val accuracy (%) of the row attribute with the column one, diagonal =
    single-task."""
    return _matrix_csv(out, [[None if c is None else 100 * c for c in row] for row in pairwise_cells(out)])


# -- document model: one list of blocks rendered to Markdown and to HTML -----------------------------


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    align: str  # one "l" / "r" per column
    rows: list[list[str]]


@dataclass
class Fig:
    name: str
    caption: str


@dataclass
class Report:
    markdown: str
    html: str
    figures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG
    files: dict[str, str] = field(default_factory=dict)  # CSV name -> text


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Bullets):
            lines += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join("---:" if c == "r" else "---" for c in b.align) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Fig):
            lines += [f"![{b.caption}]({FIGURE_DIR}/{b.name}.png)", "", f"*{b.caption}*", ""]
    return "\n".join(lines)


_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    """HTML of a text with `code` and **bold** spans; everything else escaped."""
    parts, pos = [], 0
    for m in _INLINE.finditer(text):
        parts.append(html.escape(text[pos : m.start()]))
        parts.append(
            f"<code>{html.escape(m.group(1))}</code>"
            if m.group(1) is not None
            else f"<strong>{html.escape(m.group(2))}</strong>"
        )
        pos = m.end()
    parts.append(html.escape(text[pos:]))
    return "".join(parts)


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}-{n}", n + 1
    used.add(slug)
    return slug


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 2em auto;
  max-width: 1200px; padding: 0 1em; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .15em; margin-top: 2em; }
.scroll { overflow-x: auto; margin: .5em 0 1em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; }
th { background: #f0f0f0; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
td.l, th.l { text-align: left; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; font-size: 90%; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 13px; margin-top: .3em; }
nav ul { columns: 2; font-size: 14px; }
""".strip()


def to_html(blocks: list, title: str, figures: dict[str, bytes]) -> str:
    used: set[str] = set()
    ids = [(_slug(b.text, used) if isinstance(b, Heading) else None) for b in blocks]
    body: list[str] = []
    toc = [
        f'<li><a href="#{i}">{_inline(b.text)}</a></li>'
        for b, i in zip(blocks, ids)
        if isinstance(b, Heading) and b.level == 2
    ]
    for b, anchor in zip(blocks, ids):
        if isinstance(b, Heading):
            body.append(f'<h{b.level} id="{anchor}">{_inline(b.text)}</h{b.level}>')
            if b.level == 1 and toc:
                body.append("<nav><ul>\n" + "\n".join(toc) + "\n</ul></nav>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>\n" + "\n".join(f"<li>{_inline(x)}</li>" for x in b.items) + "\n</ul>")
        elif isinstance(b, Table):
            head = "".join(f'<th class="{c}">{_inline(h)}</th>' for h, c in zip(b.header, b.align))
            rows = "\n".join(
                "<tr>" + "".join(f'<td class="{c}">{_inline(x)}</td>' for x, c in zip(row, b.align)) + "</tr>"
                for row in b.rows
            )
            body.append(
                f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table></div>'
            )
        elif isinstance(b, Fig):
            data = base64.b64encode(figures[b.name]).decode("ascii")
            alt = html.escape(b.caption, quote=True)
            body.append(
                f'<figure id="fig-{b.name}"><img src="data:image/png;base64,{data}" alt="{alt}">'
                f"<figcaption>{_inline(b.caption)}</figcaption></figure>"
            )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# -- sections ----------------------------------------------------------------------------------------


def _per_attribute(out: ReduceOutput) -> list:
    blocks: list = []
    for split, title in (("val", "Validation"), ("test", "Test")):
        table, c = table3(out, split)
        blocks += [
            Heading(2, f"{title} accuracy (%), the paper's Table 3 columns"),
            table,
            Para(
                f"Adversarial improved over single-task on {c['over_single']} of {c['total']} attributes, "
                f"over multi-task with the partner on {c['over_multi']} of {c['total']}."
            ),
        ]
    blocks.append(
        Para(
            "Sin: single-task; Mul: multi-task with the most negative partner; Adv: adversarial (gradient reversal) "
            "with that partner at the λ chosen on validation. An attribute without a negative partner keeps its "
            f"single-task accuracy in Mul and Adv (the paper's Table 6, attribute 14). Partners from: `{out.partners_from}`."
        )
    )
    return blocks


def _partner_drops(out: ReduceOutput) -> list:
    """Is each partner's drop real? McNemar's exact test on a's validation images, a alone vs a
    trained with its partner (the pairwise stage's runs)."""
    tested = [a for a in out.attributes if out.partners.get(a) and drop_significant(out, a) is not None]
    if not tested:
        return []
    rows = []
    for a in tested:
        b = out.partners[a]
        t = out.partner_tests[a][b]
        sig = drop_significant(out, a)
        rows.append(
            [str(out.attributes.index(a) + 1), a, _partner_cell(out, b), f"{100 * t['drop']:.2f}", str(t["only_alone"]),
             str(t["only_with"]), _p_text(t["p"]), "yes" if sig else f"no {NOT_SIGNIFICANT}"]
        )  # fmt: skip
    rule = {"none": "any drop, the paper's rule", "mcnemar": "a significant drop in this test"}[out.partner_test]
    bar = f" larger than {100 * out.min_drop:g} points" if out.min_drop else ""
    n_not = sum(1 for a in tested if not drop_significant(out, a))
    return [
        Heading(2, "Partner drops: paired test on validation images"),
        Para(
            f"Partners chosen for {rule}{bar} (`adversarial.partner_test: {out.partner_test}`, "
            f"`adversarial.min_drop: {out.min_drop:g}`). Lost: images a gets right alone and wrong when trained with "
            f"its partner; gained: the other way round. McNemar's exact test on those discordant images, two-sided; "
            f"a drop counts as significant at p < {ALPHA}. "
            f"{n_not} of {len(tested)} partners' drops are not significant ({NOT_SIGNIFICANT} in the tables above)."
        ),
        Table(["#", "Attribute", "Partner", "Drop (points)", "Lost", "Gained", "p", f"Significant at {ALPHA}"], "rllrrrrl", rows),
    ]


def _lambda_curves(out: ReduceOutput) -> list:
    """Validation accuracy of each attribute's adversarial runs against λ (how λ was chosen)."""
    attrs = [a for a in out.attributes if out.adversarial.get(a)]
    if not attrs:
        return []
    grid = sorted({r["lam"] for a in attrs for r in out.adversarial[a].values()})
    rows = []
    for a in attrs:
        runs = {r["lam"]: r["val"] for r in out.adversarial[a].values()}
        chosen = out.chosen_lambda.get(a)
        cells = ["" if lam not in runs else (f"**{_pct(runs[lam])}**" if lam == chosen else _pct(runs[lam])) for lam in grid]
        rows.append([str(out.attributes.index(a) + 1), a, _partner_cell(out, out.partners.get(a)), _pct(out.single_val.get(a)), *cells])
    return [
        Heading(2, "Validation accuracy against λ"),
        Para(
            "Each attribute's gradient-reversal runs with its partner, validation accuracy (%) per λ; bold: the λ chosen "
            "(highest; ties go to the first λ of the grid); empty: run missing. Single: the single-task accuracy the final selection "
            "compares with. Training curves per epoch: the TensorBoard event files of each run in the store."
        ),
        Table(["#", "Attribute", "Partner", "Single", *(f"λ={lam:g}" for lam in grid)], "rllr" + "r" * len(grid), rows),
    ]


def _training_curves(out: ReduceOutput) -> list:
    """Validation accuracy per epoch of each final classifier's run (best epoch in bold)."""
    attrs = [a for a in out.attributes if a in out.final_curves]
    if not attrs:
        return []
    epochs = max(len(out.final_curves[a]["val"]) for a in attrs)
    rows = []
    for a in attrs:
        curve = out.final_curves[a]
        cells = [
            "" if e >= len(curve["val"]) else (f"**{_pct(curve['val'][e])}**" if e + 1 == curve["best_epoch"] else _pct(curve["val"][e]))
            for e in range(epochs)
        ]
        rows.append([str(out.attributes.index(a) + 1), a, out.final[a].source, *cells])
    return [
        Heading(2, "Training curves of the final classifiers"),
        Para(
            "Validation accuracy (%) after each epoch of the run each final classifier comes from; bold: the epoch kept "
            "(best on validation). Every run's full curves (losses, learning rate): its TensorBoard event file in the store."
        ),
        Table(["#", "Attribute", "Source", *(f"Epoch {e + 1}" for e in range(epochs))], "rll" + "r" * epochs, rows),
    ]


def _figure2(out: ReduceOutput, figures: dict[str, bytes]) -> list:
    blocks: list = [Heading(2, "Accuracy per attribute (the paper's Figure 2)")]
    if "accuracy_bars" not in figures:
        return blocks + [Para("No single-task accuracy yet: nothing to plot.")]
    return blocks + [
        Fig(
            "accuracy_bars",
            "Validation accuracy per attribute: single task, multi-task with the most negative partner, adversarial "
            "with that partner (top); differences to single task in percentage points (bottom).",
        )
    ]


def _final_and_multi(out: ReduceOutput) -> list:
    blocks: list = []
    if out.final:
        rows = []
        for i, a in enumerate(out.attributes, 1):
            c = out.final.get(a)
            if c:
                lam = "" if c.lam is None else f"{c.lam:g}"
                rows.append([str(i), a, c.source, c.partner or "", lam, _pct(c.val), _pct(c.test)])
        blocks += [
            Heading(2, "Final model set"),
            Table(["#", "Attribute", "Source", "Partner", "λ", "Val", "Test"], "rllllrr", rows),
        ]
    if out.multi_val:
        rows = [
            [str(i), a, _pct(out.multi_val.get(a)), _pct(out.multi_test.get(a))]
            for i, a in enumerate(out.attributes, 1)
        ]
        rows.append(
            [
                "",
                "**Mean**",
                _pct(_mean([out.multi_val.get(a) for a in out.attributes])),
                _pct(_mean([out.multi_test.get(a) for a in out.attributes])),
            ]
        )
        blocks += [
            Heading(2, "Multi-task over all attributes (%)"),
            Table(["#", "Attribute", "Val", "Test"], "rlrr", rows),
        ]
    return blocks


def _pairwise(out: ReduceOutput, figures: dict[str, bytes]) -> list:
    blocks: list = [Heading(2, "Pairwise multi-task matrix (the paper's Table 4)")]
    if "pairwise_relative" not in figures:
        return blocks + [Para("No pairwise run is committed yet.")]
    return blocks + [
        Para(
            f"`{RELATIVE_CSV}`: row a, column b, cell = validation accuracy of a trained together with b minus a's "
            "single-task accuracy, in percentage points (diagonal and missing runs empty). "
            f"`{ACCURACY_CSV}`: the paper's Table 4, absolute validation accuracy (%) with single-task on the diagonal. "
            "Both sit next to this report."
        ),
        Fig(
            "pairwise_relative",
            "acc(a with b) − single(a) on validation, percentage points; red: b hurts a (negative transfer), blue: b "
            "helps a; black boxes: each attribute's partner; blank diagonal.",
        ),
    ]


def _correlation(out: ReduceOutput, figures: dict[str, bytes]) -> list:
    blocks: list = [Heading(2, "Label correlation and negative transfer (the paper's Figure 3)")]
    if not out.label_corr:
        return blocks + [Para("Skipped: the reduce output has no label correlations (`label_corr` is empty).")]
    points = scatter_points(out)
    if not points:
        return blocks + [Para("Skipped: no ordered pair has both a label correlation and a pairwise run.")]
    r = pearson([p[2] for p in points], [p[3] for p in points])
    ref = f" (the paper's Figure 3: {paper.FIGURE3_CELEBA_R} on CelebA)" if out.dataset == "celeba" else ""
    return blocks + [
        Para(
            f"Pearson r of the scatter: {_opt(r, '.3f', 'n/a (constant input)')} over {len(points)} ordered pairs{ref}. "
            "x: Pearson correlation of the two attributes' training labels; y: relative accuracy change of a, "
            "(acc(a with b) − single(a)) / single(a) in %, validation."
        ),
        Fig(
            "correlation_scatter",
            "Label correlation of (a, b) against the relative accuracy change of a when trained with b; diamonds: a with its partner.",
        ),
    ]


def _ablations(out: ReduceOutput) -> list:
    celeba = out.dataset == "celeba"
    header = ["Method", "Val (%)", "Test (%)"] + (["Paper, CelebA val (%)"] if celeba else []) + ["Status"]
    rows, not_run = [], []
    for r in ablation_rows(out):
        if r.status == "not run" and not celeba:  # CelebA keeps the row: the paper's number is in it
            not_run.append(r.label)
            continue
        cells = [r.label, _pct(r.val), _pct(r.test)]
        if celeba:
            cells.append(f"{paper.TABLE1_CELEBA_VAL[r.key]:.2f}")
        rows.append(cells + [r.status or "complete"])
    notes = [
        "Means over all M attributes; an attribute without a partner (or, for multiple adversarial attributes, "
        "without any attribute that lowers it) counts with its single-task accuracy, as the paper's Table 6 does.",
        "GAN loss: the alternating GAN objective (eq. 4/5) instead of gradient reversal.",
        "Wasserstein-GAN loss: a Wasserstein critic as the auxiliary head, Lipschitz by weight clipping.",
        "Shared CNN representation: gradient reversal on hidden layers over the frozen multi-task CNN.",
        "Multiple adversarial attributes: adversarial against every attribute that lowers a (the paper's Table 5).",
    ]
    if celeba:
        notes.append(
            f"Paper column: {paper.TABLE1_SOURCE}; section 4.2.1's text gives 92.31 for multiple adversarial attributes, the table 91.31."
        )
    if not_run:
        notes.append(f"Not run: {'; '.join(not_run)} (`aal-k8s pipeline --stages all` runs every ablation).")
    return [
        Heading(2, "Ablations (the paper's Table 1)"),
        Table(header, "lrr" + ("r" if celeba else "") + "l", rows),
        Bullets(notes),
    ]


def _published(out: ReduceOutput) -> list:
    if out.dataset != "celeba":
        return []
    label, _, ours_test = ours(out)
    own = {
        "single": next(r for r in ablation_rows(out) if r.key == "single").test,
        "multi_all": next(r for r in ablation_rows(out) if r.key == "multi_all").test,
        "ours": ours_test,
    }
    rows = []
    for name, cite, value in paper.TABLE2_CELEBA_TEST:
        key = paper.TABLE2_OURS.get(name)
        mine = _pct(own[key]) if key else ""
        rows.append([name, f"{value:.2f}", mine, cite])
    return [
        Heading(2, "Comparison with published CelebA test accuracy (the paper's Table 2)"),
        Table(["Method", "Published test (%)", "This run, test (%)", "Source"], "lrrl", rows),
        Para(
            f"Published numbers: {paper.TABLE2_SOURCE}. This run: mean test accuracy over the 40 attributes; "
            f"Ours = {label}. Backbones differ between the published methods (see the paper, section 4.2.2)."
        ),
    ]


def _significance(out: ReduceOutput) -> list:
    blocks: list = [Heading(2, "Statistical significance (the paper's appendix A.1)")]
    label, p1_val, p1_test = ours(out)
    if p1_val is None and p1_test is None:
        return blocks + [Para("Skipped: our method has no complete result yet (missing adversarial runs).")]
    m = len(out.attributes)
    sizes = ", ".join(
        f"{s}: {out.eval_images[s]} images × {m} = {out.eval_images[s] * m}"
        for s in ("val", "test")
        if out.eval_images.get(s)
    )
    rows = [
        [
            r["split"], r["baseline"], f"{100 * r['p1']:.3f}", f"{100 * r['p0']:.3f}", "n/a" if r["n"] is None else str(r["n"]),
            _opt(r["z"], ".2f"), _p_text(r["p"]), _significant_text(r["z"], r["p"]),
        ]
        for r in significance_rows(out)
    ]  # fmt: skip
    blocks += [
        Para(
            f"Ours (P1) = {label}. One-sample z-test of a Bernoulli proportion against each baseline's mean accuracy P0: "
            "z = (P1 − P0)·√N / √(P0(1 − P0)), two-sided p-value, N = images × attributes "
            f"({sizes or 'image counts unknown: N n/a'}). Significant: p < {ALPHA}; n/a where P0 is 0 or 1 or N is unknown."
        ),
        Table(
            ["Split", "Baseline (P0)", "P1 (%)", "P0 (%)", "N", "z", "p", f"Significant at {ALPHA}"], "llrrrrrl", rows
        ),
    ]
    return blocks + _paired_significance(out)


def _paired_significance(out: ReduceOutput) -> list:
    """The final set against each baseline on the same test images (``ReduceOutput.paired_test``)."""
    labels = {b.key: b.label for b in baselines(out)}
    keys = [k for k in labels if k in out.paired_test]
    if not keys:
        return []
    rows = []
    for k in keys:
        r = out.paired_test[k]
        sig = "n/a" if r["p"] is None else ("no" if r["p"] >= ALPHA else ("yes" if r["diff"] > 0 else "yes (worse)"))
        rows.append(
            [labels[k], f"{100 * r['diff']:+.2f}", f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]",
             str(r["only_final"]), str(r["only_baseline"]), _p_text(r["p"]), sig]
        )  # fmt: skip
    first = out.paired_test[keys[0]]
    return [
        Heading(3, "Paired tests on the test images"),
        Para(
            f"The final model set against each baseline on the same {first['images']} test images × {first['attributes']} "
            "attributes (validation chose partners, λ and epochs, so test is the honest split). Difference: mean test "
            "accuracy, final minus baseline, in points, with a 95% percentile bootstrap interval over images "
            f"({BOOTSTRAP_RESAMPLES} resamples; an image's attributes stay together). Final only / baseline only: the "
            "(image, attribute) predictions only one of the two gets right; p: McNemar's exact test on them, two-sided. "
            "A baseline identical to the final set has no row."
        ),
        Table(["Baseline", "Difference", "95% interval", "Final only", "Baseline only", "p", f"Significant at {ALPHA}"], "lrrrrrl", rows),
    ]


def seed_comparison(out: ReduceOutput, level: float = 0.95) -> list:
    """The final set against single-task over seeds (``ReduceOutput.seeds``, ``--seeds N``): per
    seed the mean test accuracy over attributes of each, and their mean over seeds with a Student-t
    interval (n - 1 degrees of freedom). Nothing when fewer than two seeds are complete."""
    if len(out.seeds) < 2:
        return []
    from scipy.stats import t

    seeds = sorted(out.seeds, key=int)
    per = {
        s: {k: sum(v[k] for v in out.seeds[s].values()) / len(out.seeds[s]) for k in ("final", "single")}
        for s in seeds
    }  # fmt: skip
    for v in per.values():
        v["gain"] = v["final"] - v["single"]
    n = len(seeds)
    half = t.ppf(0.5 + level / 2, n - 1) / math.sqrt(n)

    def mean_ci(key: str, signed: bool) -> str:
        xs = [per[s][key] for s in seeds]
        m = sum(xs) / n
        h = half * math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
        f = "+.2f" if signed else ".2f"
        return f"{100 * m:{f}} [{100 * (m - h):{f}}, {100 * (m + h):{f}}]"

    rows = [[s, _pct(per[s]["final"]), _pct(per[s]["single"]), f"{100 * per[s]['gain']:+.2f}"] for s in seeds]
    rows.append([f"mean over {n} seeds [{level:.0%} interval]", mean_ci("final", False), mean_ci("single", False),
                 mean_ci("gain", True)])  # fmt: skip
    return [
        Heading(3, "Final set against single-task over seeds"),
        Para(
            f"Each seed trains the single-task baselines and each attribute's final classifier (single or adversarial "
            f"at the chosen λ, as validation chose with seed {seeds[0]}) again; mean test accuracy over the "
            f"{len(out.attributes)} attributes per seed, then the mean over seeds with a {level:.0%} Student-t interval "
            f"({n - 1} degrees of freedom). Gain: final minus single-task, in points."
        ),
        Table(["Seed", "Final set (%)", "Single-task (%)", "Gain (points)"], "lrrr", rows),
    ]


def _discovery(out: ReduceOutput, figures: dict[str, bytes]) -> list:
    c = comparison(out)
    blocks: list = []
    if c is not None:
        methods, m = c["methods"], c["m"]
        rho_methods = [meth for meth in methods if meth != "pairwise"]
        header = ["#", "Attribute"] + [f"{meth} partner" for meth in methods] + [f"ρ {meth}" for meth in rho_methods]
        rows = []
        for r in c["per_attr"]:
            partners = ["" if p == "?" else _partner_cell(out, p) for p in r["partners"].values()]
            rows.append(
                [str(r["index"]), r["name"], *partners, *(_opt(r["rho"][meth], "+.3f") for meth in rho_methods)]
            )
        summary = []
        for s in c["summary"]:
            agree = (
                "—" if s["method"] == "pairwise" else ("n/a" if s["agreement"] is None else f"{s['agreement']} of {m}")
            )
            rho = (
                "—"
                if s["method"] == "pairwise"
                else (f"{s['rho_mean']:+.3f} ({s['rho_n']} of {m})" if s["rho_mean"] is not None else "n/a")
            )
            adv = s["adversarial"]
            runs = "n/a" if s["runs"] is None else str(s["runs"])
            seconds = "n/a" if s["seconds"] is None else f"{s['seconds']:.0f}"
            ratio = "n/a" if s["ratio"] is None else f"{s['ratio']:.1f}"
            summary.append(
                [
                    s["method"],
                    agree,
                    rho,
                    _pct(adv.val) or adv.status,
                    _pct(adv.test) or adv.status,
                    runs,
                    seconds,
                    ratio,
                ]
            )
        yard = "n/a (no committed multi run)" if c["yardstick"] is None else f"{c['yardstick']:.0f} s"
        blocks += [
            Heading(2, "Partner discovery methods compared"),
            Para(
                f"Partners for the adversarial stage came from `{out.partners_from}`. Top-1 agreement: the method picks the "
                "same partner as the pairwise matrix (both none counts as agreement). ρ: Spearman rank correlation, per "
                "attribute a, of the method's scores of every b ≠ a with the pairwise row acc(a with b) − single(a); "
                "both oriented so that higher = better for a: affinity Z(b → a) as is (> 0: b helps a), correlation "
                "as −|r(a, b)| (a strongly correlated label, either sign, predicted more harmful). n/a: constant row."
            ),
            Table(header, "rl" + "l" * len(methods) + "r" * len(rho_methods), rows),
            Table(
                [
                    "Method",
                    "Top-1 agreement with pairwise",
                    "Mean ρ (attributes)",
                    "Adv val (%)",
                    "Adv test (%)",
                    "Training runs",
                    "Run-seconds",
                    "× one ordinary run",
                ],
                "lllrrrrr",
                summary,
            ),
            Para(
                f"Adv: mean accuracy of the adversarial models trained with each method's partners (best λ on validation), "
                f"single-task where the method finds no partner. Cost: run-seconds of the method's own stage "
                f"(correlation reads only the training labels: no training run); one ordinary run = the multi-task run, {yard}."
            ),
        ]
    if "affinity" in figures:
        if c is None:
            blocks.append(Heading(2, "Inter-task affinity"))
        blocks.append(
            Fig(
                "affinity",
                "Affinity Z(b → a): row a, column b; blue: a step on b's loss lowers a's loss, red: raises it; boxes: affinity partners.",
            )
        )
    return blocks


def _compute(out: ReduceOutput) -> list:
    stages = [s for s in STAGES if s in out.stage_seconds or s in out.stage_runs]
    stages += sorted(s for s in {*out.stage_seconds, *out.stage_runs} if s not in STAGES)
    if not stages:
        return []
    multi_s, multi_n = out.stage_seconds.get("multi"), out.stage_runs.get("multi")
    yard = multi_s / multi_n if multi_s and multi_n else None
    rows = []
    for s in stages:
        sec = out.stage_seconds.get(s)
        rows.append(
            [
                s,
                _opt(out.stage_runs.get(s), "d"),
                _opt(sec, ".0f"),
                "n/a" if sec is None or not yard else f"{sec / yard:.1f}",
            ]
        )
    total = sum(out.stage_seconds.values())
    rows.append(
        ["**Total**", str(sum(out.stage_runs.values())), f"{total:.0f}", "n/a" if not yard else f"{total / yard:.1f}"]
    )
    return [
        Heading(2, "Compute per stage"),
        Para("Run-seconds: the sum of the committed runs' total seconds; one ordinary run = the multi-task run."),
        Table(["Stage", "Committed runs", "Run-seconds", "× one ordinary run"], "lrrr", rows),
    ]


def _missing(out: ReduceOutput) -> list:
    blocks: list = [Heading(2, "Missing runs")]
    missing = {s: ids for s, ids in out.missing.items() if ids}
    stages = list(STAGES) + sorted(s for s in missing if s not in STAGES)
    rows = [[s, _opt(out.stage_runs.get(s), "d", ""), str(len(missing.get(s, [])))] for s in stages]
    blocks.append(Table(["Stage", "Committed", "Missing"], "lrr", rows))
    if not missing:
        return blocks + [Para("None: every planned run is committed.")]
    items = []
    for stage in stages:
        for rid in missing.get(stage, []):
            why = out.failed.get(rid)
            items.append(f"{stage}: `{rid}`" + (f" (failed: {why})" if why else " (not committed)"))
    return blocks + [Bullets(items)]


def _summary(out: ReduceOutput) -> list:
    """What improved, by how much, on which split and how sure: the opening paragraph."""
    label, _, p1_test = ours(out)
    single = next(r for r in ablation_rows(out) if r.key == "single")
    m = len(out.attributes)
    if p1_test is None or single.test is None:
        return [Para("**Summary.** No complete result yet: see the missing runs at the end.")]
    diff = 100 * (p1_test - single.test)
    text = (
        f"**Summary.** {label[0].upper() + label[1:]}: mean test accuracy {_pct(p1_test)}% over {m} attributes, "
        f"{diff:+.2f} points over single-task training"
    )
    paired = out.paired_test.get("single")
    if paired:
        verdict = "significant" if paired["p"] < ALPHA else "not significant"
        text += (
            f" (95% bootstrap interval over test images [{100 * paired['ci_low']:+.2f}, {100 * paired['ci_high']:+.2f}]; "
            f"McNemar p = {_p_text(paired['p'])}: {verdict} at {ALPHA})"
        )
    else:
        z_row = next((r for r in significance_rows(out) if r["split"] == "test" and r["key"] == "single"), None)
        if z_row and z_row["p"] is not None:
            text += f" (the paper's z-test: p = {_p_text(z_row['p'])})"
    with_partner = [a for a in out.attributes if out.partners.get(a)]
    not_sig = [a for a in with_partner if drop_significant(out, a) is False]
    adv = [a for a in out.attributes if a in out.final and out.final[a].source == "adversarial"]
    text += (
        f". {len(with_partner)} of {m} attributes have a negative partner ({out.partners_from}"
        + (f"; {len(not_sig)} of those drops not significant" if not_sig else "")
        + f"); {len(adv)} use their adversarial model in the final set. Validation chose partners, λ and epochs, "
        "so the test numbers are untouched by those choices."
    )
    return [Para(text)]


def _provenance(out: ReduceOutput) -> list:
    prov = out.provenance
    if not prov.code:
        return []  # reduced by a version that did not record it
    cfg = prov.config
    model, train, adv, data = cfg.get("model", {}), cfg.get("train", {}), cfg.get("adversarial", {}), cfg.get("dataset", {})
    sizes = " / ".join(f"{prov.split_sizes[s]} {s}" for s in ("train", "val", "test") if s in prov.split_sizes)
    lams = ", ".join(f"{x:g}" for x in adv.get("lambdas", []))
    when = f"Runs committed {prov.first_commit} to {prov.last_commit} (UTC). " if prov.first_commit else ""
    return [
        Para(
            f"**Provenance.** Code: aal-k8s {prov.code}. Data: {out.dataset}"
            + (f", {sizes} images" if sizes else "")
            + f" (seed {data.get('seed', '?')}). Config: {model.get('backbone', '?')} ({model.get('pretrained', '?')} init), "
            f"lr {train.get('lr', '?'):g}, {train.get('epochs', '?')} epochs, batch {train.get('batch_size', '?')}, "
            f"λ grid [{lams}], partners from {adv.get('partners_from', '?')} (test {adv.get('partner_test', '?')}, "
            f"min drop {adv.get('min_drop', 0):g}), final selection {adv.get('final_selection', '?')}. {when}"
            "The full config is `provenance.config` in `reduce/summary.json`."
        )
    ]


def report_blocks(out: ReduceOutput, experiment: str, figures: dict[str, bytes]) -> list:
    blocks: list = [
        Heading(1, _title(out, experiment)),
        *_summary(out),
        *_provenance(out),
        Para(
            f"{len(out.attributes)} attributes. Accuracies in percent. Figures: embedded in `report.html`; the "
            f"links below resolve in the store next to `report.md` (`{FIGURE_DIR}/`)."
        ),
    ]
    blocks += _per_attribute(out)
    blocks += _partner_drops(out)
    blocks += _lambda_curves(out)
    blocks += _training_curves(out)
    blocks += _figure2(out, figures)
    blocks += _final_and_multi(out)
    blocks += _pairwise(out, figures)
    blocks += _correlation(out, figures)
    blocks += _ablations(out)
    blocks += _published(out)
    blocks += _significance(out)
    blocks += seed_comparison(out)
    blocks += _discovery(out, figures)
    blocks += _halving(out)
    blocks += _compute(out)
    blocks += _missing(out)
    return blocks


def _title(out: ReduceOutput, experiment: str) -> str:
    """``AAL report: celeba-rerun (celeba)``; the dataset only once when the experiment is named after it."""
    return f"AAL report: {experiment}" + ("" if experiment == out.dataset else f" ({out.dataset})")
def _halving(out: ReduceOutput) -> list:
    """Successive halving's lambda curves: each lambda's rung scores, and where it was stopped
    (nothing under grid search: the report stays as it was)."""
    if not out.halving:
        return []
    rows = []
    for a in out.attributes:
        h = out.halving.get(a)
        if not h:
            continue
        curve: dict[float, list[str]] = {}
        for d in h["decisions"]:
            for e in d["entrants"]:
                mark = "" if e["lam"] in d["survivors"] else " (stopped)"
                curve.setdefault(e["lam"], []).append(f"e{d['epoch']}: {_pct(e['score'])}{mark}")
        chosen = out.chosen_lambda.get(a)
        for lam, points in curve.items():
            final = out.adversarial.get(a, {}).get(repr(lam))
            end = _pct(final["val"]) if final else ("" if h["survivors"] is None or lam not in h["survivors"] else "running")
            rows.append([a, f"{lam:g}" + (" (chosen)" if lam == chosen else ""), "; ".join(points), end])
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


def render_report(out: ReduceOutput, experiment: str) -> Report:
    """Markdown, HTML, figures (PNG) and CSVs of the report."""
    figures = render_figures(out, table_rows(out, "val"))
    blocks = report_blocks(out, experiment, figures)
    used = {b.name for b in blocks if isinstance(b, Fig)}
    figures = {k: v for k, v in figures.items() if k in used}
    files = {RELATIVE_CSV: relative_csv(out), ACCURACY_CSV: accuracy_csv(out)}
    title = _title(out, experiment)
    return Report(to_markdown(blocks), to_html(blocks, title, figures), figures, files)


def render_markdown(out: ReduceOutput, experiment: str) -> str:
    """The Markdown alone (figures are referenced, not rendered)."""
    from aal_k8s.figures import FIGURES

    placeholder = dict.fromkeys(FIGURES, b"")
    blocks = report_blocks(out, experiment, _available_figures(out, placeholder))
    return to_markdown(blocks)


def _available_figures(out: ReduceOutput, placeholder: dict[str, bytes]) -> dict[str, bytes]:
    """Which figures ``render_figures`` would make, without rendering them."""
    have = {
        "pairwise_relative": any(v is not None for row in relative_matrix(out) for v in row),
        "accuracy_bars": any(r["sin"] is not None for r in table_rows(out, "val")),
        "correlation_scatter": bool(scatter_points(out)),
        "affinity": any(v is not None for row in affinity_matrix(out) for v in row),
    }
    return {k: v for k, v in placeholder.items() if have[k]}

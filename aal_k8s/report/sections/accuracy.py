"""Per-attribute accuracy: the paper's Table 3 per split, whether each partner's drop is real, the
lambda and training curves, Figure 2, the final model set and multi-task over all attributes."""

from __future__ import annotations

from aal_k8s.report.analysis import Analysis, Table3
from aal_k8s.report.document import Fig, Heading, Para, Table
from aal_k8s.report.figures import AccuracyBars
from aal_k8s.report.sections.common import NOT_SIGNIFICANT, diff, p_text, partner_cell, pct
from aal_k8s.significance import ALPHA


def _table3(a: Analysis, t: Table3) -> Table:
    body = []
    for r in t.rows:
        partner = partner_cell(a.out, r.partner)
        if a.drop_significant[r.name] is False:
            partner += f" {NOT_SIGNIFICANT}"
        lam = "" if r.lam is None else f"{r.lam:g}"
        body.append(
            [
                str(r.index), r.name, partner, pct(r.sin), pct(r.mul), pct(r.adv),
                diff(r.mul, r.sin), diff(r.adv, r.sin), diff(r.adv, r.mul), lam, r.final or "",
            ]
        )  # fmt: skip
    body.append(
        ["", "**Mean**", "", pct(t.sin), pct(t.mul), pct(t.adv), diff(t.mul, t.sin), diff(t.adv, t.sin), diff(t.adv, t.mul), "", ""]
    )
    header = ["#", "Attribute", "Neg. partner", "Sin", "Mul", "Adv", "Mul−Sin", "Adv−Sin", "Adv−Mul", "λ", "Final"]
    return Table(header, "rllrrrrrrrl", body)


def per_attribute(a: Analysis) -> list:
    blocks: list = []
    for t, title in ((a.val, "Validation"), (a.test, "Test")):
        n = len(t.rows)
        blocks += [
            Heading(2, f"{title} accuracy (%), the paper's Table 3 columns"),
            _table3(a, t),
            Para(
                f"Adversarial improved over single-task on {t.over_single} of {n} attributes, "
                f"over multi-task with the partner on {t.over_multi} of {n}."
            ),
        ]
    blocks.append(
        Para(
            "Sin: single-task; Mul: multi-task with the most negative partner; Adv: adversarial (gradient reversal) "
            "with that partner at the λ chosen on validation. An attribute without a negative partner keeps its "
            f"single-task accuracy in Mul and Adv (the paper's Table 6, attribute 14). Partners from: `{a.out.partners_from}`."
        )
    )
    return blocks


def partner_drops(a: Analysis) -> list:
    """Is each partner's drop real? McNemar's exact test on a's validation images, a alone vs a
    trained with its partner (the pairwise stage's runs)."""
    out = a.out
    tested = [x for x in out.attributes if out.partners.get(x) and a.drop_significant[x] is not None]
    if not tested:
        return []
    rows = []
    for x in tested:
        b = out.partners[x]
        t = out.partner_tests[x][b]
        sig = a.drop_significant[x]
        rows.append(
            [str(out.attributes.index(x) + 1), x, partner_cell(out, b), f"{100 * t['drop']:.2f}", str(t["only_alone"]),
             str(t["only_with"]), p_text(t["p"]), "yes" if sig else f"no {NOT_SIGNIFICANT}"]
        )  # fmt: skip
    rule = {"none": "any drop, the paper's rule", "mcnemar": "a significant drop in this test"}[out.partner_test]
    bar = f" larger than {100 * out.min_drop:g} points" if out.min_drop else ""
    n_not = sum(1 for x in tested if not a.drop_significant[x])
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


def lambda_curves(a: Analysis) -> list:
    """Validation accuracy of each attribute's adversarial runs against λ (how λ was chosen)."""
    out = a.out
    attrs = [x for x in out.attributes if out.adversarial.get(x)]
    if not attrs:
        return []
    grid = sorted({r["lam"] for x in attrs for r in out.adversarial[x].values()})
    rows = []
    for x in attrs:
        runs = {r["lam"]: r["val"] for r in out.adversarial[x].values()}
        chosen = out.chosen_lambda.get(x)
        cells = ["" if lam not in runs else (f"**{pct(runs[lam])}**" if lam == chosen else pct(runs[lam])) for lam in grid]
        rows.append([str(out.attributes.index(x) + 1), x, partner_cell(out, out.partners.get(x)), pct(out.single_val.get(x)), *cells])
    return [
        Heading(2, "Validation accuracy against λ"),
        Para(
            "Each attribute's gradient-reversal runs with its partner, validation accuracy (%) per λ; bold: the λ chosen "
            "(highest; ties go to the first λ of the grid); empty: run missing. Single: the single-task accuracy the final selection "
            "compares with. Training curves per epoch: the TensorBoard event files of each run in the store."
        ),
        Table(["#", "Attribute", "Partner", "Single", *(f"λ={lam:g}" for lam in grid)], "rllr" + "r" * len(grid), rows),
    ]


def training_curves(a: Analysis) -> list:
    """Validation accuracy per epoch of each final classifier's run (best epoch in bold)."""
    out = a.out
    attrs = [x for x in out.attributes if x in out.final_curves]
    if not attrs:
        return []
    epochs = max(len(out.final_curves[x]["val"]) for x in attrs)
    rows = []
    for x in attrs:
        curve = out.final_curves[x]
        cells = [
            "" if e >= len(curve["val"]) else (f"**{pct(curve['val'][e])}**" if e + 1 == curve["best_epoch"] else pct(curve["val"][e]))
            for e in range(epochs)
        ]
        rows.append([str(out.attributes.index(x) + 1), x, out.final[x].source, *cells])
    return [
        Heading(2, "Training curves of the final classifiers"),
        Para(
            "Validation accuracy (%) after each epoch of the run each final classifier comes from; bold: the epoch kept "
            "(best on validation). Every run's full curves (losses, learning rate): its TensorBoard event file in the store."
        ),
        Table(["#", "Attribute", "Source", *(f"Epoch {e + 1}" for e in range(epochs))], "rll" + "r" * epochs, rows),
    ]


def figure2(a: Analysis) -> list:
    blocks: list = [Heading(2, "Accuracy per attribute (the paper's Figure 2)")]
    bars = AccuracyBars(a.val.rows)
    if bars.empty:
        return blocks + [Para("No single-task accuracy yet: nothing to plot.")]
    return blocks + [
        Fig(
            bars,
            "Validation accuracy per attribute: single task, multi-task with the most negative partner, adversarial "
            "with that partner (top); differences to single task in percentage points (bottom).",
        )
    ]


def final_and_multi(a: Analysis) -> list:
    out = a.out
    blocks: list = []
    if out.final:
        rows = []
        for i, x in enumerate(out.attributes, 1):
            c = out.final.get(x)
            if c:
                lam = "" if c.lam is None else f"{c.lam:g}"
                rows.append([str(i), x, c.source, c.partner or "", lam, pct(c.val), pct(c.test)])
        blocks += [
            Heading(2, "Final model set"),
            Table(["#", "Attribute", "Source", "Partner", "λ", "Val", "Test"], "rllllrr", rows),
        ]
    if out.multi_val:
        rows = [[str(i), x, pct(out.multi_val.get(x)), pct(out.multi_test.get(x))] for i, x in enumerate(out.attributes, 1)]
        multi = a.ablation("multi_all")  # the same means, None as soon as one attribute lacks its value
        rows.append(["", "**Mean**", pct(multi.val), pct(multi.test)])
        blocks += [
            Heading(2, "Multi-task over all attributes (%)"),
            Table(["#", "Attribute", "Val", "Test"], "rlrr", rows),
        ]
    return blocks

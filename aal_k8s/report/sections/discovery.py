"""Partner discovery methods compared (top-1 agreement, rank agreement, the adversarial models
each method's partners give, cost) and the affinity heatmap."""

from __future__ import annotations

from aal_k8s.report.analysis import Analysis
from aal_k8s.report.document import Fig, Heading, Para, Table
from aal_k8s.report.figures import AffinityHeatmap
from aal_k8s.report.sections.common import opt, partner_cell, pct


def discovery(a: Analysis) -> list:
    out, c = a.out, a.comparison
    m = len(out.attributes)
    blocks: list = []
    if c is not None:
        methods = c.methods
        rho_methods = [meth for meth in methods if meth != "pairwise"]
        header = ["#", "Attribute"] + [f"{meth} partner" for meth in methods] + [f"ρ {meth}" for meth in rho_methods]
        rows = []
        for r in c.attributes:
            partners = ["" if p == "?" else partner_cell(out, p) for p in r.partners.values()]
            rows.append([str(r.index), r.name, *partners, *(opt(r.rho[meth], "+.3f") for meth in rho_methods)])
        summary = []
        for s in c.summary:
            own = s.method == "pairwise"  # the reference: nothing to agree with
            agree = "—" if own else ("n/a" if s.agreement is None else f"{s.agreement} of {m}")
            rho = "—" if own else (f"{s.rho_mean:+.3f} ({s.rho_n} of {m})" if s.rho_mean is not None else "n/a")
            summary.append(
                [
                    s.method,
                    agree,
                    rho,
                    pct(s.adversarial.val) or s.adversarial.status,
                    pct(s.adversarial.test) or s.adversarial.status,
                    "n/a" if s.runs is None else str(s.runs),
                    "n/a" if s.seconds is None else f"{s.seconds:.0f}",
                    "n/a" if s.ratio is None else f"{s.ratio:.1f}",
                ]
            )
        yard = "n/a (no committed multi run)" if a.yardstick is None else f"{a.yardstick:.0f} s"
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
    heatmap = AffinityHeatmap(out.attributes, a.affinity, out.partner_sources.get("affinity", {}))
    if not heatmap.empty:
        if c is None:
            blocks.append(Heading(2, "Inter-task affinity"))
        blocks.append(
            Fig(
                heatmap,
                "Affinity Z(b → a): row a, column b; blue: a step on b's loss lowers a's loss, red: raises it; boxes: affinity partners.",
            )
        )
    return blocks

"""The ablations (the paper's Table 1) and, on CelebA, the published test accuracies (Table 2)."""

from __future__ import annotations

from aal_k8s import paper
from aal_k8s.report.analysis import Analysis
from aal_k8s.report.document import Bullets, Heading, Para, Table
from aal_k8s.report.sections.common import pct


def ablations(a: Analysis) -> list:
    celeba = a.out.dataset == "celeba"
    header = ["Method", "Val (%)", "Test (%)"] + (["Paper, CelebA val (%)"] if celeba else []) + ["Status"]
    rows, not_run = [], []
    for r in a.ablations:
        if r.status == "not run" and not celeba:  # CelebA keeps the row: the paper's number is in it
            not_run.append(r.label)
            continue
        cells = [r.label, pct(r.val), pct(r.test)]
        if celeba:
            value = paper.table1_celeba_val(r.key)  # None: an ablation the paper did not run
            cells.append("" if value is None else f"{value:.2f}")
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


def published(a: Analysis) -> list:
    if a.out.dataset != "celeba":
        return []
    own = {"single": a.ablation("single").test, "multi_all": a.ablation("multi_all").test, "ours": a.ours.test}
    rows = []
    for name, cite, value in paper.TABLE2_CELEBA_TEST:
        key = paper.TABLE2_OURS.get(name)
        mine = pct(own[key]) if key else ""
        rows.append([name, f"{value:.2f}", mine, cite])
    return [
        Heading(2, "Comparison with published CelebA test accuracy (the paper's Table 2)"),
        Table(["Method", "Published test (%)", "This run, test (%)", "Source"], "lrrl", rows),
        Para(
            f"Published numbers: {paper.TABLE2_SOURCE}. This run: mean test accuracy over the 40 attributes; "
            f"Ours = {a.ours.label}. Backbones differ between the published methods (see the paper, section 4.2.2)."
        ),
    ]

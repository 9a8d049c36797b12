"""The pairwise multi-task matrix (the paper's Table 4: heatmap and two CSVs beside the report) and
label correlation against negative transfer (the paper's Figure 3)."""

from __future__ import annotations

from aal_k8s import paper
from aal_k8s.reduce import pairwise_cells
from aal_k8s.report.analysis import Analysis, Matrix
from aal_k8s.report.document import Fig, Heading, Para
from aal_k8s.report.figures import CorrelationScatter, PairwiseHeatmap
from aal_k8s.report.sections.common import opt

RELATIVE_CSV = "pairwise_relative.csv"
ACCURACY_CSV = "pairwise_accuracy.csv"


def _matrix_csv(attributes: list[str], cells: Matrix) -> str:
    lines = [",".join(["attribute", *attributes])]
    for x, row in zip(attributes, cells):
        lines.append(",".join([x, *("" if c is None else f"{c:.4f}" for c in row)]))
    return "\n".join(lines) + "\n"


def csv_files(a: Analysis) -> dict[str, str]:
    """``RELATIVE_CSV``: acc[a][b] - single[a] in percentage points, diagonal and missing runs
    empty; ``ACCURACY_CSV``: the paper's Table 4, val accuracy (%) of the row attribute with the
    column one, diagonal = single-task."""
    attrs = a.out.attributes
    accuracy = [[None if c is None else 100 * c for c in row] for row in pairwise_cells(a.out)]
    return {RELATIVE_CSV: _matrix_csv(attrs, a.relative), ACCURACY_CSV: _matrix_csv(attrs, accuracy)}


def pairwise(a: Analysis) -> list:
    blocks: list = [Heading(2, "Pairwise multi-task matrix (the paper's Table 4)")]
    heatmap = PairwiseHeatmap(a.out.attributes, a.relative, a.out.partners, a.out.partners_from)
    if heatmap.empty:
        return blocks + [Para("No pairwise run is committed yet.")]
    return blocks + [
        Para(
            f"`{RELATIVE_CSV}`: row a, column b, cell = validation accuracy of a trained together with b minus a's "
            "single-task accuracy, in percentage points (diagonal and missing runs empty). "
            f"`{ACCURACY_CSV}`: the paper's Table 4, absolute validation accuracy (%) with single-task on the diagonal. "
            "Both sit next to this report."
        ),
        Fig(
            heatmap,
            "acc(a with b) − single(a) on validation, percentage points; red: b hurts a (negative transfer), blue: b "
            "helps a; black boxes: each attribute's partner; blank diagonal.",
        ),
    ]


def correlation(a: Analysis) -> list:
    blocks: list = [Heading(2, "Label correlation and negative transfer (the paper's Figure 3)")]
    if not a.out.label_corr:
        return blocks + [Para("Skipped: the reduce output has no label correlations (`label_corr` is empty).")]
    scatter = CorrelationScatter(a.scatter, a.scatter_r, a.out.partners)
    if scatter.empty:
        return blocks + [Para("Skipped: no ordered pair has both a label correlation and a pairwise run.")]
    ref = f" (the paper's Figure 3: {paper.FIGURE3_CELEBA_R} on CelebA)" if a.out.dataset == "celeba" else ""
    return blocks + [
        Para(
            f"Pearson r of the scatter: {opt(a.scatter_r, '.3f', 'n/a (constant input)')} over {len(a.scatter)} ordered pairs{ref}. "
            "x: Pearson correlation of the two attributes' training labels; y: relative accuracy change of a, "
            "(acc(a with b) − single(a)) / single(a) in %, validation."
        ),
        Fig(
            scatter,
            "Label correlation of (a, b) against the relative accuracy change of a when trained with b; diamonds: a with its partner.",
        ),
    ]

"""The report: Markdown plus one self-contained HTML file, from the reduce output alone.

Sin = single-task, Mul = trained together with the most negative partner, Adv = adversarial with
that partner at the lambda chosen on validation. Accuracies in percent. Sections: the paper's
Table 3 per attribute (val and test), Figure 2 (bars), the final model set, multi-task over all
attributes, the pairwise matrix (Table 4, heatmap and CSV), label correlation against negative
transfer (Figure 3), the ablations (Table 1), the published CelebA numbers (Table 2, CelebA only),
significance (appendix A.1), partner discovery methods compared, compute per stage and the runs
still missing.

The flow: ``analysis.analyse`` computes every number once into typed values; the modules of
``sections`` turn them into the blocks of ``document``; its Jinja2 templates render the blocks to
Markdown and HTML; ``figures`` draws the PNGs the blocks name. The output depends only on the
reduce output (no timestamps, deterministic figures), so re-running it on the same results gives
the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from aal_k8s.reduce import ReduceOutput
from aal_k8s.report.analysis import Analysis, analyse
from aal_k8s.report.document import FIGURE_DIR, Block, Fig, Heading, Para, to_html, to_markdown
from aal_k8s.report.figures import FIGURES
from aal_k8s.report.sections import ablations, accuracy, discovery, matrices, opening, runs, significance

__all__ = ["FIGURE_DIR", "Report", "render_report"]


def _blocks(a: Analysis, title: str) -> list[Block]:
    return [
        Heading(1, title),
        *opening.summary(a),
        *opening.provenance(a),
        Para(
            f"{len(a.out.attributes)} attributes. Accuracies in percent. Figures: embedded in `report.html`; the "
            f"links below resolve in the store next to `report.md` (`{FIGURE_DIR}/`)."
        ),
        *accuracy.per_attribute(a),
        *accuracy.partner_drops(a),
        *accuracy.lambda_curves(a),
        *accuracy.training_curves(a),
        *accuracy.figure2(a),
        *accuracy.final_and_multi(a),
        *matrices.pairwise(a),
        *matrices.correlation(a),
        *ablations.ablations(a),
        *ablations.published(a),
        *significance.significance(a),
        *significance.seed_comparison(a.out),
        *discovery.discovery(a),
        *runs.halving(a),
        *runs.compute(a),
        *runs.missing(a),
    ]


@dataclass
class Report:
    """The rendered report. The Markdown needs no figure drawn; the figures (PNG, drawn on first
    use) and the HTML that embeds them are rendered when asked for."""

    title: str
    blocks: list[Block]
    files: dict[str, str] = field(default_factory=dict)  # CSV name -> text

    @cached_property
    def markdown(self) -> str:
        return to_markdown(self.blocks)

    @cached_property
    def figures(self) -> dict[str, bytes]:
        """File stem -> PNG of every figure the report shows, in ``FIGURES`` order."""
        shown = {b.name: b.figure for b in self.blocks if isinstance(b, Fig)}
        return {name: shown[name].png() for name in FIGURES if name in shown}

    @cached_property
    def html(self) -> str:
        return to_html(self.blocks, self.title, self.figures)


def render_report(out: ReduceOutput, experiment: str) -> Report:
    """The report of ``out`` for ``experiment``: Markdown, HTML, figures (PNG) and CSVs."""
    a = analyse(out)
    title = opening.title(a, experiment)
    return Report(title, _blocks(a, title), matrices.csv_files(a))

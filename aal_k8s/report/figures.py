"""The report's figures as PNG bytes, rendered with matplotlib's Agg canvas.

Each figure is a small dataclass of the typed values it draws (``aal_k8s.report.analysis``), with
its file stem as ``name`` and ``png()``. Every figure depends only on those values: no pyplot state,
rcParams reset to matplotlib's defaults plus the explicit ``RC`` below for each figure, fixed sizes
(a function of the number of attributes only) and dpi, no PNG metadata (``Software`` removed, no
timestamp). Re-rendering the same values gives the same bytes.

* ``PairwiseHeatmap`` (``pairwise_relative``): acc[a][b] - single[a] (percentage points), the
  paper's Table 4 relative to the diagonal; boxes mark each row's most negative partner;
* ``AccuracyBars`` (``accuracy_bars``): single / multi with the most negative partner / adversarial
  on validation, per attribute (the paper's Figure 2), with the differences to single-task below;
* ``CorrelationScatter`` (``correlation_scatter``): label correlation of each ordered pair against
  the relative accuracy change of multi-task versus single-task (the paper's Figure 3);
* ``AffinityHeatmap`` (``affinity``): the affinity matrix Z(b -> a).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import style  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from aal_k8s.report.analysis import AttributeRow, Matrix, ScatterPoint  # noqa: E402

DPI = 150
RC = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "axes.facecolor": "white",
    "axes.unicode_minus": True,
    "text.usetex": False,
    "text.parse_math": False,  # attribute names are plain text
    "text.hinting": "force_autohint",
    "text.antialiased": True,
    "lines.antialiased": True,
    "patch.antialiased": True,
    "image.interpolation": "nearest",
    "path.simplify": True,
    "svg.hashsalt": "aal-k8s",
}
COLORS = {"single": "#4c72b0", "multi": "#dd8452", "adversarial": "#55a868", "partner": "#c44e52", "pair": "#4c72b0"}
FIGURES = ("pairwise_relative", "accuracy_bars", "correlation_scatter", "affinity")  # file stems, in store order


class Figure(Protocol):
    name: ClassVar[str]  # the PNG's file stem, one of FIGURES

    @property
    def empty(self) -> bool:
        """Nothing to draw (the report says so instead)."""

    def png(self) -> bytes: ...


# -- rendering ----------------------------------------------------------------------------------------


def _labels(attributes: list[str]) -> list[str]:
    return [f"{i} {a}" for i, a in enumerate(attributes, 1)]


def _label_size(m: int) -> float:
    return 8 if m <= 12 else 7 if m <= 24 else 6


def _png(fig: MplFigure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _render(draw, *args) -> bytes:
    with style.context(["default", RC]):
        return _png(draw(*args))


def _heatmap(
    attributes: list[str],
    values: Matrix,
    title: str,
    cbar_label: str,
    boxes: dict[int, int],
    box_label: str,
    xlabel: str,
    decimals: int,
) -> MplFigure:
    m = len(attributes)
    cell = min(0.6, max(0.2, 7.0 / m))
    fs = _label_size(m)
    labels = _labels(attributes)
    label_in = 0.075 * fs * max(len(s) for s in labels) / 7.0 + 0.4
    fig = MplFigure(figsize=(cell * m + label_in + 1.4, cell * m + label_in + 0.9), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    arr = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    finite = arr[np.isfinite(arr)]
    vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="equal")
    for i in range(m):
        for j in range(m):
            if i != j and not np.isfinite(arr[i, j]):  # a missing run, not the blank diagonal
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="////", edgecolor="#999999", lw=0))
            elif m <= 10 and i != j:
                color = "white" if abs(arr[i, j]) > 0.6 * vmax else "black"
                text = f"{arr[i, j]:+.{decimals}f}".replace("-", "\u2212")
                ax.text(j, i, text, ha="center", va="center", fontsize=fs - 1, color=color)
    for i, j in sorted(boxes.items()):  # black outside, white inside: visible on dark and light cells
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", lw=2.0))
        ax.add_patch(Rectangle((j - 0.42, i - 0.42), 0.84, 0.84, fill=False, edgecolor="white", lw=0.7))
    ax.set_xticks(range(m), labels, rotation=90, fontsize=fs)
    ax.set_yticks(range(m), labels, fontsize=fs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("attribute a")
    ax.set_xticks(np.arange(-0.5, m, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, m, 1), minor=True)
    ax.grid(which="minor", color="#eeeeee", lw=0.4)
    ax.tick_params(which="minor", length=0)
    ax.set_title(title + (f"\n{box_label}" if boxes else ""))
    cb = fig.colorbar(im, ax=ax, shrink=min(1.0, 0.5 + 3.0 / m), pad=0.02)
    cb.set_label(cbar_label)
    cb.ax.tick_params(labelsize=fs)
    return fig


def _decimals(values: Matrix) -> int:
    """Decimals that show the largest magnitude with two significant digits (0 to 5)."""
    top = max((abs(v) for row in values for v in row if v is not None), default=0.0)
    if top <= 0:
        return 2
    return min(5, max(0, 1 - math.floor(math.log10(top))))


def _boxes(attributes: list[str], partners: dict[str, str | None]) -> dict[int, int]:
    """Row index -> column index of each attribute's partner."""
    idx = {a: i for i, a in enumerate(attributes)}
    return {idx[a]: idx[b] for a, b in partners.items() if b is not None and a in idx and b in idx}


def _all_none(values: Matrix) -> bool:
    return all(v is None for row in values for v in row)


@dataclass(frozen=True)
class PairwiseHeatmap:
    name: ClassVar[str] = "pairwise_relative"
    attributes: list[str]
    relative: Matrix  # percentage points, None on the diagonal and where a run is missing
    partners: dict[str, str | None]  # boxed
    partners_from: str  # the method the partners come from

    @property
    def empty(self) -> bool:
        return _all_none(self.relative)

    @property
    def legend(self) -> str:
        """The key line; hatching is explained only when a cell is hatched (a run missing)."""
        missing = any(v is None for i, row in enumerate(self.relative) for j, v in enumerate(row) if i != j)
        return f"boxes: each attribute's partner ({self.partners_from})" + ("; hatched: run missing" if missing else "")

    def png(self) -> bytes:
        return _render(
            _heatmap,
            self.attributes,
            self.relative,
            "Pairwise multi-task vs single task, validation: acc(a with b) − single(a)",
            "accuracy change of a (percentage points)",
            _boxes(self.attributes, self.partners),
            self.legend,
            "partner b (trained together with a)",
            2,
        )


@dataclass(frozen=True)
class AffinityHeatmap:
    name: ClassVar[str] = "affinity"
    attributes: list[str]
    z: Matrix  # Z(a_j -> a_i), None on the diagonal and where nothing was measured
    partners: dict[str, str | None]  # the affinity method's partners, boxed

    @property
    def empty(self) -> bool:
        return _all_none(self.z)

    def png(self) -> bytes:
        return _render(
            _heatmap,
            self.attributes,
            self.z,
            "Inter-task affinity Z(b → a): a step on b's loss, effect on a's loss",
            "Z(b → a) (> 0: b helps a, < 0: b hurts a)",
            _boxes(self.attributes, self.partners),
            "boxes: each attribute's affinity partner",
            "b (the task whose update is measured)",
            _decimals(self.z),
        )


def _bars(rows: list[AttributeRow]) -> MplFigure:
    m = len(rows)
    fs = _label_size(m)
    width_in = max(6.0, 0.32 * m + 1.6)
    fig = MplFigure(figsize=(width_in, 6.2), dpi=DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    x = np.arange(m)
    w = 0.27
    series = (
        ("sin", "Single task", COLORS["single"]),
        ("mul", "Multi-task with the most negative partner", COLORS["multi"]),
        ("adv", "Adversarial with the most negative partner (chosen λ)", COLORS["adversarial"]),
    )

    def pct(r: AttributeRow, k: str) -> float:
        v = getattr(r, k)
        return np.nan if v is None else 100.0 * v

    values = [pct(r, k) for r in rows for k, _, _ in series]
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 100.0)
    span = hi - lo
    top.set_ylim(max(0.0, lo - max(0.5, 0.1 * span)), hi + max(0.3, 0.06 * span))
    for n, (k, label, color) in enumerate(series):
        top.bar(x + (n - 1) * w, [pct(r, k) for r in rows], w, label=label, color=color)
    top.set_ylabel("validation accuracy (%)")
    top.set_title("Accuracy per attribute on the validation split (the paper's Figure 2)")
    top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=3 if width_in >= 9 else 1, frameon=False)
    top.grid(axis="y", color="#dddddd", lw=0.5)
    top.set_axisbelow(True)

    for n, (k, label, color) in enumerate(series[1:]):
        diffs = [pct(r, k) - pct(r, "sin") for r in rows]
        bottom.bar(x + (n - 0.5) * w, diffs, w, label=label.split(" with")[0] + " − single", color=color)
    bottom.axhline(0.0, color="black", lw=0.6)
    bottom.set_ylabel("difference to single task (pp)")
    bottom.legend(loc="best", frameon=False)
    bottom.grid(axis="y", color="#dddddd", lw=0.5)
    bottom.set_axisbelow(True)
    bottom.set_xticks(
        x, [f"{r.index} {r.name}" for r in rows], rotation=60, ha="right", rotation_mode="anchor", fontsize=fs
    )
    bottom.set_xlim(-0.6, m - 0.4)
    return fig


@dataclass(frozen=True)
class AccuracyBars:
    name: ClassVar[str] = "accuracy_bars"
    rows: list[AttributeRow]  # the validation split's Table 3 rows

    @property
    def empty(self) -> bool:
        return all(r.sin is None for r in self.rows)

    def png(self) -> bytes:
        return _render(_bars, self.rows)


def _scatter(points: list[ScatterPoint], r: float | None, partners: dict[str, str | None]) -> MplFigure:
    fig = MplFigure(figsize=(6.4, 4.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    partner = {(a, b) for a, b in partners.items() if b is not None}
    rest = [p for p in points if (p.a, p.b) not in partner]
    chosen = [p for p in points if (p.a, p.b) in partner]
    size = 14 if len(points) <= 100 else 6
    ax.scatter(
        [p.corr for p in rest],
        [p.change for p in rest],
        s=size,
        color=COLORS["pair"],
        alpha=0.6,
        lw=0,
        label="ordered pair (a, b)",
    )
    if chosen:
        ax.scatter(
            [p.corr for p in chosen],
            [p.change for p in chosen],
            s=size * 2.5,
            color=COLORS["partner"],
            marker="D",
            lw=0,
            label="a with its most negative partner b",
        )
    ax.axhline(0.0, color="black", lw=0.6)
    ax.axvline(0.0, color="#999999", lw=0.5)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("Pearson correlation of the training labels of a and b")
    ax.set_ylabel("relative accuracy change of a (%)\n(multi-task with b − single) / single")
    r_text = "n/a (constant input)" if r is None else f"{r:.3f}"
    ax.set_title(
        f"Label correlation vs. multi-task accuracy change (validation)\nPearson r = {r_text} over {len(points)} ordered pairs"
    )
    ax.legend(loc="best", frameon=True)
    ax.grid(color="#eeeeee", lw=0.5)
    ax.set_axisbelow(True)
    return fig


@dataclass(frozen=True)
class CorrelationScatter:
    name: ClassVar[str] = "correlation_scatter"
    points: list[ScatterPoint]
    r: float | None  # Pearson r of the points, None when undefined
    partners: dict[str, str | None]  # (a, partner) pairs drawn as diamonds

    @property
    def empty(self) -> bool:
        return not self.points

    def png(self) -> bytes:
        return _render(_scatter, self.points, self.r, self.partners)

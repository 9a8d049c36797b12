"""The report's figures as PNG bytes, rendered with matplotlib's Agg canvas.

Every figure depends only on the reduce output: no pyplot state, rcParams reset to matplotlib's
defaults plus the explicit ``RC`` below for each figure, fixed sizes (a function of the number of
attributes only) and dpi, no PNG metadata (``Software`` removed, no timestamp). Re-rendering the same
reduce output gives the same bytes.

Figures (``render_figures`` returns those the data allows, keyed by file stem):

* ``pairwise_relative``: acc[a][b] - single[a] (percentage points), the paper's Table 4 relative to
  the diagonal; boxes mark each row's most negative partner;
* ``accuracy_bars``: single / multi with the most negative partner / adversarial on validation,
  per attribute (the paper's Figure 2), with the differences to single-task below;
* ``correlation_scatter``: label correlation of each ordered pair against the relative accuracy
  change of multi-task versus single-task (the paper's Figure 3);
* ``affinity``: the affinity matrix Z(b -> a).
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import style  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from scipy.stats import pearsonr  # noqa: E402

from aal_k8s.reduce import ReduceOutput  # noqa: E402

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
FIGURES = ("pairwise_relative", "accuracy_bars", "correlation_scatter", "affinity")


# -- data shared with the report ---------------------------------------------------------------------


def relative_matrix(out: ReduceOutput) -> list[list[float | None]]:
    """[i][j] = 100 * (pair_val[a_i][a_j] - single_val[a_i]) in percentage points; None on the
    diagonal and where a run is missing."""
    rows = []
    for a in out.attributes:
        single, pair = out.single_val.get(a), out.pair_val.get(a, {})
        rows.append(
            [None if b == a or single is None or b not in pair else 100.0 * (pair[b] - single) for b in out.attributes]
        )
    return rows


def affinity_matrix(out: ReduceOutput) -> list[list[float | None]]:
    """[i][j] = Z(a_j -> a_i); None on the diagonal and where no value was measured."""
    return [[None if b == a else out.affinity.get(a, {}).get(b) for b in out.attributes] for a in out.attributes]


def scatter_points(out: ReduceOutput) -> list[tuple[str, str, float, float]]:
    """(a, b, label correlation of a and b, relative change of a's val accuracy with b in %) for every
    ordered pair a != b with all three numbers, in attribute order."""
    points = []
    for a in out.attributes:
        single = out.single_val.get(a)
        if not single:
            continue
        for b in out.attributes:
            corr = out.label_corr.get(a, {}).get(b)
            pair = out.pair_val.get(a, {}).get(b)
            if b == a or corr is None or pair is None:
                continue
            points.append((a, b, float(corr), 100.0 * (pair - single) / single))
    return points


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson r, or None with fewer than 3 points or a constant input (r undefined)."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    r = float(pearsonr(xs, ys)[0])
    return r if math.isfinite(r) else None


# -- rendering ----------------------------------------------------------------------------------------


def _labels(out: ReduceOutput) -> list[str]:
    return [f"{i} {a}" for i, a in enumerate(out.attributes, 1)]


def _label_size(m: int) -> float:
    return 8 if m <= 12 else 7 if m <= 24 else 6


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _render(draw, *args) -> bytes:
    with style.context(["default", RC]):
        return _png(draw(*args))


def _heatmap(
    out: ReduceOutput,
    values: list[list[float | None]],
    title: str,
    cbar_label: str,
    boxes: dict[int, int],
    box_label: str,
    xlabel: str,
    decimals: int,
) -> Figure:
    m = len(out.attributes)
    cell = min(0.6, max(0.2, 7.0 / m))
    fs = _label_size(m)
    label_in = 0.075 * fs * max(len(s) for s in _labels(out)) / 7.0 + 0.4
    fig = Figure(figsize=(cell * m + label_in + 1.4, cell * m + label_in + 0.9), dpi=DPI, layout="constrained")
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
    labels = _labels(out)
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


def _decimals(values: list[list[float | None]]) -> int:
    """Decimals that show the largest magnitude with two significant digits (0 to 5)."""
    top = max((abs(v) for row in values for v in row if v is not None), default=0.0)
    if top <= 0:
        return 2
    return min(5, max(0, 1 - math.floor(math.log10(top))))


def _partner_boxes(out: ReduceOutput) -> dict[int, int]:
    idx = {a: i for i, a in enumerate(out.attributes)}
    return {idx[a]: idx[b] for a, b in out.partners.items() if b is not None and a in idx and b in idx}


def pairwise_legend(out: ReduceOutput, values: list[list[float | None]]) -> str:
    """The heatmap's key line; hatching is explained only when a cell is hatched (a run missing)."""
    missing = any(v is None for i, row in enumerate(values) for j, v in enumerate(row) if i != j)
    return f"boxes: each attribute's partner ({out.partners_from})" + ("; hatched: run missing" if missing else "")


def pairwise_heatmap(out: ReduceOutput) -> bytes | None:
    values = relative_matrix(out)
    if all(v is None for row in values for v in row):
        return None
    return _render(
        _heatmap,
        out,
        values,
        "Pairwise multi-task vs single task, validation: acc(a with b) − single(a)",
        "accuracy change of a (percentage points)",
        _partner_boxes(out),
        pairwise_legend(out, values),
        "partner b (trained together with a)",
        2,
    )


def affinity_heatmap(out: ReduceOutput) -> bytes | None:
    values = affinity_matrix(out)
    if all(v is None for row in values for v in row):
        return None
    idx = {a: i for i, a in enumerate(out.attributes)}
    boxes = {
        idx[a]: idx[b]
        for a, b in out.partner_sources.get("affinity", {}).items()
        if b is not None and a in idx and b in idx
    }
    return _render(
        _heatmap,
        out,
        values,
        "Inter-task affinity Z(b → a): a step on b's loss, effect on a's loss",
        "Z(b → a) (> 0: b helps a, < 0: b hurts a)",
        boxes,
        "boxes: each attribute's affinity partner",
        "b (the task whose update is measured)",
        _decimals(values),
    )


def _bars(out: ReduceOutput, rows: list[dict]) -> Figure:
    m = len(rows)
    fs = _label_size(m)
    width_in = max(6.0, 0.32 * m + 1.6)
    fig = Figure(figsize=(width_in, 6.2), dpi=DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    x = np.arange(m)
    w = 0.27
    series = (
        ("sin", "Single task", COLORS["single"]),
        ("mul", "Multi-task with the most negative partner", COLORS["multi"]),
        ("adv", "Adversarial with the most negative partner (chosen λ)", COLORS["adversarial"]),
    )

    def pct(r, k):
        return np.nan if r[k] is None else 100.0 * r[k]

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
        x, [f"{r['index']} {r['name']}" for r in rows], rotation=60, ha="right", rotation_mode="anchor", fontsize=fs
    )
    bottom.set_xlim(-0.6, m - 0.4)
    return fig


def accuracy_bars(out: ReduceOutput, rows: list[dict]) -> bytes | None:
    """``rows``: the report's validation table rows (index, name, sin, mul, adv as fractions)."""
    if not rows or all(r["sin"] is None for r in rows):
        return None
    return _render(_bars, out, rows)


def _scatter(out: ReduceOutput, points: list[tuple[str, str, float, float]], r: float | None) -> Figure:
    fig = Figure(figsize=(6.4, 4.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    partner = {(a, b) for a, b in out.partners.items() if b is not None}
    rest = [p for p in points if (p[0], p[1]) not in partner]
    chosen = [p for p in points if (p[0], p[1]) in partner]
    size = 14 if len(points) <= 100 else 6
    ax.scatter(
        [p[2] for p in rest],
        [p[3] for p in rest],
        s=size,
        color=COLORS["pair"],
        alpha=0.6,
        lw=0,
        label="ordered pair (a, b)",
    )
    if chosen:
        ax.scatter(
            [p[2] for p in chosen],
            [p[3] for p in chosen],
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


def correlation_scatter(out: ReduceOutput) -> bytes | None:
    points = scatter_points(out)
    if not points:
        return None
    r = pearson([p[2] for p in points], [p[3] for p in points])
    return _render(_scatter, out, points, r)


def render_figures(out: ReduceOutput, val_rows: list[dict]) -> dict[str, bytes]:
    """Every figure the data allows, keyed by name (see ``FIGURES``), in ``FIGURES`` order."""
    made = {
        "pairwise_relative": pairwise_heatmap(out),
        "accuracy_bars": accuracy_bars(out, val_rows),
        "correlation_scatter": correlation_scatter(out),
        "affinity": affinity_heatmap(out),
    }
    return {name: made[name] for name in FIGURES if made[name] is not None}

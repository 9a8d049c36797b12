"""Number and cell formatting shared by the sections."""

from __future__ import annotations

from aal_k8s.reduce import ReduceOutput

NOT_SIGNIFICANT = "†"  # marks a partner whose drop McNemar's test does not find significant


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def diff(x: float | None, y: float | None) -> str:
    return "" if x is None or y is None else f"{100 * (x - y):+.2f}"


def opt(x: float | None, fmt: str, none: str = "n/a") -> str:
    return none if x is None else format(x, fmt)


def p_text(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.6f}" if p >= 1e-6 else f"{p:.1e}"


def partner_cell(out: ReduceOutput, partner: str | None) -> str:
    """``5 (red_tint)``: the partner's 1-based index and name."""
    if partner is None:
        return "none"
    i = out.attributes.index(partner) + 1 if partner in out.attributes else "?"
    return f"{i} ({partner})"

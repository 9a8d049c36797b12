"""How a negative partner is chosen: the discovery methods and the rules that pick one partner
per attribute from a row of scores.

Core knowledge with no dependencies: the config validates ``adversarial.partners_from`` against
``PARTNER_METHODS``, the training-side affinity maths and the reduce stage apply the same rules,
and the report orders its columns by ``PARTNER_METHODS``.
"""

from __future__ import annotations

from typing import Callable

#: Partner discovery methods (``adversarial.partners_from``), in the report's column order:
#: the pairwise matrix (the paper), the affinity stage's lookahead, train label correlations.
PARTNER_METHODS = ("pairwise", "affinity", "correlation")


def most_negative_partner(
    attr: str, single: float, row: dict[str, float], order: list[str], min_drop: float = 0.0,
    accept: Callable[[str], bool] | None = None,
) -> str | None:
    """The partner with the largest accuracy drop below single-task, or None if none drops.

    ``min_drop``: the drop must exceed it (0: any drop, the paper); ``accept(b)``: a further test a
    candidate must pass (the largest drop that passes wins); ties go to the lower index."""
    drops = [(row[b] - single, i, b) for i, b in enumerate(order) if b != attr and b in row and row[b] - single < -min_drop]
    for _, _, b in sorted(drops):
        if accept is None or accept(b):
            return b
    return None


def most_correlated_partner(attr: str, row: dict[str, float], order: list[str]) -> str | None:
    """The partner whose train labels correlate most (|Pearson r|) with ``attr``'s: the naive
    guess the paper's Figure 3 tests (r = 0.004 on CelebA); None when every r is 0 or undefined."""
    best, best_abs = None, 0.0
    for b in order:
        r = row.get(b)
        if b == attr or r is None or r != r:  # r != r: NaN (a constant label column)
            continue
        if abs(r) > best_abs:
            best, best_abs = b, abs(r)
    return best

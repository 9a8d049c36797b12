"""Statistical significance as in the paper's appendix A.1.

A mean accuracy over M attributes on a split of I images is the proportion of correct predictions
among N = I x M binary predictions. The null hypothesis is that our method's proportion equals the
baseline's P0; with P1 our observed proportion, the one-sample z statistic of a Bernoulli proportion
is

    z = (P1 - P0) * sqrt(N) / sqrt(P0 * (1 - P0))

and the p-value is two-sided, 2 * P(Z > |z|) for a standard normal Z.
"""

from __future__ import annotations

import math

from scipy.stats import norm

ALPHA = 0.05


def z_test(p1: float, p0: float, n: int) -> tuple[float | None, float | None]:
    """``(z, two-sided p-value)`` for proportion ``p1`` against ``p0`` over ``n`` trials.

    Proportions are fractions in [0, 1]. ``(None, None)`` when the test is undefined: P0 of 0 or 1
    (zero variance under the null), ``n`` < 1, or a value that is not a finite number."""
    values = (p1, p0)
    if n is None or n < 1 or any(v is None or not math.isfinite(v) for v in values):
        return None, None
    if not 0.0 < p0 < 1.0 or not 0.0 <= p1 <= 1.0:
        return None, None
    z = (p1 - p0) * math.sqrt(n) / math.sqrt(p0 * (1.0 - p0))
    return z, float(2.0 * norm.sf(abs(z)))


def significant(p_value: float | None, alpha: float = ALPHA) -> bool | None:
    return None if p_value is None else p_value < alpha

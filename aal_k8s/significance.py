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
from dataclasses import dataclass

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
    from scipy.stats import norm  # here, not at import: `aal-k8s --help` stays free of scipy

    z = (p1 - p0) * math.sqrt(n) / math.sqrt(p0 * (1.0 - p0))
    return z, float(2.0 * norm.sf(abs(z)))


def significant(p_value: float | None, alpha: float = ALPHA) -> bool | None:
    return None if p_value is None else p_value < alpha


# -- paired tests on the same images ------------------------------------------------------------------
# The z-test above compares two mean accuracies as if they came from independent samples; two
# classifiers evaluated on the same images are paired, and only the images on which they disagree
# say anything about which is better (McNemar 1947).


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on the discordant pairs of two correctness vectors over the same items."""

    only_first: int  # items the first classifier gets right and the second wrong
    only_second: int  # and the other way round
    p: float  # two-sided: the binomial probability of a split at least this uneven, with p = 1/2

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p < alpha


def mcnemar_exact(first, second) -> McNemar:
    """McNemar's exact test of ``first`` against ``second`` (bool arrays, same shape, paired item
    by item). With no discordant pair the two are indistinguishable: p = 1."""
    import numpy as np

    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if first.shape != second.shape:
        raise ValueError(f"paired test on different items: shapes {first.shape} and {second.shape}")
    b = int(np.count_nonzero(first & ~second))
    c = int(np.count_nonzero(second & ~first))
    if b + c == 0:
        return McNemar(0, 0, 1.0)
    from scipy.stats import binomtest

    return McNemar(b, c, float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue))


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: the report is a function of the results, the same bytes every time


def bootstrap_interval(per_item, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``per_item`` (one value per image, e.g. the
    difference in the share of attributes two model sets get right on it), resampling images."""
    import numpy as np

    x = np.asarray(per_item, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap needs a non-empty 1-d array of per-item values")
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = np.empty(resamples)
    for start in range(0, resamples, 100):  # 100 resamples at a time: memory stays at 100 x images
        stop = min(resamples, start + 100)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)

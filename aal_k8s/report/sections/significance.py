"""Statistical significance: the paper's z-test (appendix A.1) and the paired tests of the final
set on the same test images."""

from __future__ import annotations

import math

from aal_k8s.reduce import ReduceOutput
from aal_k8s.report.analysis import Analysis
from aal_k8s.report.document import Heading, Para, Table
from aal_k8s.report.sections.common import opt, p_text, pct
from aal_k8s.significance import ALPHA, BOOTSTRAP_RESAMPLES


def _significant_text(z: float | None, p: float | None) -> str:
    if p is None or z is None:
        return "n/a"
    if p >= ALPHA:
        return "no"
    return "yes" if z > 0 else "yes (worse)"


def significance(a: Analysis) -> list:
    out = a.out
    blocks: list = [Heading(2, "Statistical significance (the paper's appendix A.1)")]
    if a.ours.val is None and a.ours.test is None:
        return blocks + [Para("Skipped: our method has no complete result yet (missing adversarial runs).")]
    m = len(out.attributes)
    sizes = ", ".join(
        f"{s}: {out.eval_images[s]} images × {m} = {out.eval_images[s] * m}"
        for s in ("val", "test")
        if out.eval_images.get(s)
    )
    rows = [
        [
            r.split, r.baseline, f"{100 * r.p1:.3f}", f"{100 * r.p0:.3f}", "n/a" if r.n is None else str(r.n),
            opt(r.z, ".2f"), p_text(r.p), _significant_text(r.z, r.p),
        ]
        for r in a.z_tests
    ]  # fmt: skip
    blocks += [
        Para(
            f"Ours (P1) = {a.ours.label}. One-sample z-test of a Bernoulli proportion against each baseline's mean accuracy P0: "
            "z = (P1 − P0)·√N / √(P0(1 − P0)), two-sided p-value, N = images × attributes "
            f"({sizes or 'image counts unknown: N n/a'}). Significant: p < {ALPHA}; n/a where P0 is 0 or 1 or N is unknown."
        ),
        Table(
            ["Split", "Baseline (P0)", "P1 (%)", "P0 (%)", "N", "z", "p", f"Significant at {ALPHA}"], "llrrrrrl", rows
        ),
    ]
    return blocks + _paired(a)


def _paired(a: Analysis) -> list:
    """The final set against each baseline on the same test images (``ReduceOutput.paired_test``)."""
    out = a.out
    labels = {b.key: b.label for b in a.baselines}
    keys = [k for k in labels if k in out.paired_test]
    if not keys:
        return []
    rows = []
    for k in keys:
        r = out.paired_test[k]
        sig = "n/a" if r["p"] is None else ("no" if r["p"] >= ALPHA else ("yes" if r["diff"] > 0 else "yes (worse)"))
        rows.append(
            [labels[k], f"{100 * r['diff']:+.2f}", f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]",
             str(r["only_final"]), str(r["only_baseline"]), p_text(r["p"]), sig]
        )  # fmt: skip
    first = out.paired_test[keys[0]]
    return [
        Heading(3, "Paired tests on the test images"),
        Para(
            f"The final model set against each baseline on the same {first['images']} test images × {first['attributes']} "
            "attributes (validation chose partners, λ and epochs, so test is the honest split). Difference: mean test "
            "accuracy, final minus baseline, in points, with a 95% percentile bootstrap interval over images "
            f"({BOOTSTRAP_RESAMPLES} resamples; an image's attributes stay together). Final only / baseline only: the "
            "(image, attribute) predictions only one of the two gets right; p: McNemar's exact test on them, two-sided. "
            "A baseline identical to the final set has no row."
        ),
        Table(["Baseline", "Difference", "95% interval", "Final only", "Baseline only", "p", f"Significant at {ALPHA}"], "lrrrrrl", rows),
    ]


def seed_comparison(out: ReduceOutput, level: float = 0.95) -> list:
    """The final set against single-task over seeds (``ReduceOutput.seeds``, ``--seeds N``): per
    seed the mean test accuracy over attributes of each, and their mean over seeds with a Student-t
    interval (n - 1 degrees of freedom). Nothing when fewer than two seeds are complete."""
    if len(out.seeds) < 2:
        return []
    from scipy.stats import t

    seeds = sorted(out.seeds, key=int)
    per = {
        s: {k: sum(v[k] for v in out.seeds[s].values()) / len(out.seeds[s]) for k in ("final", "single")}
        for s in seeds
    }  # fmt: skip
    for v in per.values():
        v["gain"] = v["final"] - v["single"]
    n = len(seeds)
    half = t.ppf(0.5 + level / 2, n - 1) / math.sqrt(n)

    def mean_ci(key: str, signed: bool) -> str:
        xs = [per[s][key] for s in seeds]
        m = sum(xs) / n
        h = half * math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
        f = "+.2f" if signed else ".2f"
        # an accuracy lies in [0, 1] and a gain in [-1, 1]: with few seeds the t interval can reach
        # past them (two seeds: t = 12.7), and an interval up to 110% reads as nonsense
        lo, hi = (-1.0, 1.0) if signed else (0.0, 1.0)
        return f"{100 * m:{f}} [{100 * max(lo, m - h):{f}}, {100 * min(hi, m + h):{f}}]"

    rows = [[s, pct(per[s]["final"]), pct(per[s]["single"]), f"{100 * per[s]['gain']:+.2f}"] for s in seeds]
    rows.append([f"mean over {n} seeds [{level:.0%} interval]", mean_ci("final", False), mean_ci("single", False),
                 mean_ci("gain", True)])  # fmt: skip
    return [
        Heading(3, "Final set against single-task over seeds"),
        Para(
            f"Each seed trains the single-task baselines and each attribute's final classifier (single or adversarial "
            f"at the chosen λ, as validation chose with seed {seeds[0]}) again; mean test accuracy over the "
            f"{len(out.attributes)} attributes per seed, then the mean over seeds with a {level:.0%} Student-t interval "
            f"({n - 1} degrees of freedom), cut to the possible range. Gain: final minus single-task, in points."
        ),
        Table(["Seed", "Final set (%)", "Single-task (%)", "Gain (points)"], "lrrr", rows),
    ]

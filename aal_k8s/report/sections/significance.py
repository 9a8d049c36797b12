"""Statistical significance: the paper's z-test (appendix A.1) and the paired tests of the final
set on the same test images."""

from __future__ import annotations

from aal_k8s.report.analysis import Analysis
from aal_k8s.report.document import Heading, Para, Table
from aal_k8s.report.sections.common import opt, p_text
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

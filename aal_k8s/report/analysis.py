"""The report's numbers, computed once from the reduce output into typed values.

``analyse(out)`` is the only place that derives anything (means, counts, tests, rank agreements,
matrices); the sections only format an ``Analysis`` and the figures only draw its values.

Sin = single-task, Mul = trained together with the most negative partner, Adv = adversarial with
that partner at the lambda chosen on validation. Accuracies are fractions here; the sections turn
them into percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import pearsonr, spearmanr

from aal_k8s.partners import PARTNER_METHODS
from aal_k8s.reduce import ReduceOutput
from aal_k8s.report.labels import ablation_label
from aal_k8s.runspec import ABLATION_STAGES
from aal_k8s.significance import ALPHA, z_test

Matrix = list[list[float | None]]  # [i][j]: row attribute i, column attribute j, None where unknown
SPLITS = ("val", "test")


def _mean(xs: list[float | None]) -> float | None:
    """The mean, or None as soon as one value is missing (a mean over fewer attributes would mislead)."""
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals and len(vals) == len(xs) else None


# -- the paper's Table 3 -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeRow:
    """One attribute's Sin / Mul / Adv on one split."""

    index: int  # 1-based position in ``out.attributes``
    name: str
    partner: str | None
    sin: float | None
    mul: float | None
    adv: float | None
    lam: float | None  # the lambda chosen on validation
    final: str | None  # the final model set's source for this attribute


@dataclass(frozen=True)
class Table3:
    split: str
    rows: list[AttributeRow]
    sin: float | None  # the Mean row
    mul: float | None
    adv: float | None
    over_single: int  # attributes where Adv beats Sin
    over_multi: int  # attributes where Adv beats Mul


def _table3(out: ReduceOutput, split: str) -> Table3:
    single = out.single_val if split == "val" else out.single_test
    pair = out.pair_val if split == "val" else out.pair_test
    rows = []
    for i, a in enumerate(out.attributes, 1):
        partner = out.partners.get(a)
        lam = out.chosen_lambda.get(a)
        adv = out.adversarial.get(a, {}).get(repr(lam)) if lam is not None else None
        sin = single.get(a)
        rows.append(
            AttributeRow(
                index=i,
                name=a,
                partner=partner,
                sin=sin,
                # No partner: nothing to pair with or against, so Mul and Adv equal single-task.
                mul=pair.get(a, {}).get(partner) if partner else sin,
                adv=(adv[split] if adv else None) if partner else sin,
                lam=lam,
                final=out.final[a].source if a in out.final else None,
            )
        )
    return Table3(
        split,
        rows,
        sin=_mean([r.sin for r in rows]),
        mul=_mean([r.mul for r in rows]),
        adv=_mean([r.adv for r in rows]),
        over_single=sum(1 for r in rows if r.adv is not None and r.sin is not None and r.adv > r.sin),
        over_multi=sum(1 for r in rows if r.adv is not None and r.mul is not None and r.adv > r.mul),
    )


# -- Table 1: ablations ------------------------------------------------------------------------------


@dataclass
class MeanRow:
    """One method's mean accuracy over all M attributes (None when a run is missing)."""

    key: str
    label: str
    val: float | None
    test: float | None
    status: str = ""  # "" when complete, else "not run" or "missing (n of k runs not committed)"


def _mean_row(key: str, label: str, out: ReduceOutput, value, needs_run, entries: bool, partners_known: bool) -> MeanRow:
    """``value(a, split)`` -> accuracy or None; ``needs_run(a)`` -> whether the stage trains a run
    for a (else a counts with its single-task accuracy)."""
    attrs = out.attributes
    needed = [a for a in attrs if needs_run(a)]
    if not entries and (needed or not partners_known):
        return MeanRow(key, label, None, None, "not run")
    means, missing = {}, set()
    for split in SPLITS:
        single = out.single_val if split == "val" else out.single_test
        vals = []
        for a in attrs:
            v = value(a, split)
            if v is None and not needs_run(a):
                v = single.get(a)
            if v is None:
                missing.add(a)
            vals.append(v)
        means[split] = _mean(vals)
    if missing:
        n_runs = len(needed) or len(attrs)
        return MeanRow(key, label, None, None, f"missing ({len(missing)} of {n_runs} runs not committed)")
    return MeanRow(key, label, means["val"], means["test"])


def _ablation_rows(out: ReduceOutput, adv: dict[str, dict[str, float | None]]) -> list[MeanRow]:
    """The paper's Table 1 rows, in its order; ``adv``: split -> attribute -> the Adv column."""
    known = bool(out.partners)

    def split_dict(d_val, d_test):
        return lambda a, split: (d_val if split == "val" else d_test).get(a)

    rows = [
        _mean_row("single", ablation_label("single"), out, split_dict(out.single_val, out.single_test),
                  lambda a: True, bool(out.single_val), True),
        _mean_row("multi_all", ablation_label("multi_all"), out, split_dict(out.multi_val, out.multi_test),
                  lambda a: True, bool(out.multi_val), True),
    ]  # fmt: skip
    has_partner = lambda a: out.partners.get(a) is not None  # noqa: E731
    rows.append(
        _mean_row("adversarial", ablation_label("adversarial"), out,
                  lambda a, split: adv[split][a] if has_partner(a) else None,
                  has_partner, bool(out.adversarial), known)
    )  # fmt: skip
    for stage in ABLATION_STAGES:
        entries = out.ablations.get(stage, {})
        needs = (lambda a: bool(out.group_partners.get(a))) if stage == "group" else has_partner
        stage_known = bool(out.group_partners) if stage == "group" else known
        rows.append(
            _mean_row(stage, ablation_label(stage), out,
                      lambda a, split, e=entries: e[a][split] if a in e else None,
                      needs, bool(entries), stage_known)
        )  # fmt: skip
    return rows


# -- significance ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ours:
    """Our method's mean val/test accuracy and what it is."""

    label: str
    val: float | None
    test: float | None


@dataclass(frozen=True)
class ZTest:
    """The paper's one-sample z-test of our mean against one baseline's on one split."""

    split: str
    key: str  # the baseline's MeanRow key
    baseline: str  # its label
    p1: float
    p0: float
    n: int | None  # images x attributes; None when the image count is unknown
    z: float | None
    p: float | None


def _ours(out: ReduceOutput, adversarial: MeanRow) -> Ours:
    """The final model set when it covers every attribute, else the Adv column (chosen-lambda
    adversarial run, single-task where there is no partner)."""
    if out.attributes and all(a in out.final for a in out.attributes):
        vals = [out.final[a].val for a in out.attributes]
        tests = [out.final[a].test for a in out.attributes]
        return Ours("final model set", _mean(vals), _mean(tests))
    return Ours("Adv column (no final model set yet)", adversarial.val, adversarial.test)


def _baselines(ablations: list[MeanRow], val: Table3, test: Table3) -> list[MeanRow]:
    """Single, multi with the partner (Mul column), multi over all attributes, every ablation row
    with a value."""
    result = [ablations[0]]
    if val.mul is not None or test.mul is not None:
        result.append(MeanRow("multi_partner", "Multi-task with the most negative partner (Mul)", val.mul, test.mul))
    result += ablations[1:]
    return [r for r in result if r.val is not None or r.test is not None]


def _z_tests(out: ReduceOutput, ours: Ours, baselines: list[MeanRow]) -> list[ZTest]:
    m = len(out.attributes)
    rows = []
    for split, p1 in (("val", ours.val), ("test", ours.test)):
        images = out.eval_images.get(split)
        n = images * m if images else None
        for b in baselines:
            if b.key in out.final_same_as:
                continue  # the final set compared with itself
            p0 = b.val if split == "val" else b.test
            if p1 is None or p0 is None:
                continue
            z, p = z_test(p1, p0, n) if n else (None, None)
            rows.append(ZTest(split, b.key, b.label, p1, p0, n, z, p))
    return rows


def _drop_significant(out: ReduceOutput) -> dict[str, bool | None]:
    """Whether a's partner lowers it significantly on validation (McNemar, p < ALPHA; a partner's
    drop is above zero, so more images are lost than gained); None when untested (no partner, or
    runs without per-image predictions)."""
    result = {}
    for a in out.attributes:
        t = out.partner_tests.get(a, {}).get(out.partners.get(a) or "")
        result[a] = None if t is None else t["p"] < ALPHA
    return result


# -- partner discovery comparison --------------------------------------------------------------------


@dataclass(frozen=True)
class AttributePartners:
    index: int
    name: str
    partners: dict[str, str | None]  # method -> partner; "?" where the method has no entry for it
    rho: dict[str, float | None]  # method (not pairwise) -> Spearman rho with the pairwise row


@dataclass(frozen=True)
class MethodSummary:
    method: str
    agreement: int | None  # attributes with the pairwise partner; None for pairwise or without it
    rho_mean: float | None
    rho_n: int  # attributes with a rho
    adversarial: MeanRow  # adversarial models trained with this method's partners
    runs: int | None  # the method's own stage; correlation trains none
    seconds: float | None
    ratio: float | None  # seconds in units of one ordinary (multi-task) run


@dataclass(frozen=True)
class Comparison:
    methods: list[str]
    attributes: list[AttributePartners]
    summary: list[MethodSummary]


def _method_scores(out: ReduceOutput, method: str, a: str) -> dict[str, float]:
    """The row of attribute ``a`` as a method scores its partners, higher = better for a (less
    negative transfer):

    * pairwise: acc[a][b] - single[a] (measured);
    * affinity: Z(b -> a), > 0 when a step on b's loss lowers a's loss;
    * correlation: -|r(a, b)|, a strongly correlated label (either sign) predicted more harmful.
    """
    others = [b for b in out.attributes if b != a]
    if method == "pairwise":
        single, row = out.single_val.get(a), out.pair_val.get(a, {})
        return {} if single is None else {b: row[b] - single for b in others if b in row}
    if method == "affinity":
        row = out.affinity.get(a, {})
        return {b: row[b] for b in others if b in row}
    if method == "correlation":
        row = out.label_corr.get(a, {})
        return {b: -abs(row[b]) for b in others if b in row}
    return {}


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho, or None with fewer than 3 points or a constant row."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rho = float(spearmanr(xs, ys).statistic)
    return rho if math.isfinite(rho) else None


def _method_spearman(out: ReduceOutput, method: str, a: str) -> float | None:
    """Rank agreement of ``method``'s row of ``a`` with the pairwise row (common partners only)."""
    ref, row = _method_scores(out, "pairwise", a), _method_scores(out, method, a)
    common = [b for b in out.attributes if b in ref and b in row]
    return _spearman([row[b] for b in common], [ref[b] for b in common])


def _method_adversarial_row(out: ReduceOutput, method: str, partners: dict[str, str | None], adv_col: dict) -> MeanRow:
    """Mean val/test of the adversarial models trained with ``method``'s partners (single-task
    where the method finds none); ``adv_col``: split -> attribute -> the Adv column."""
    runs = out.method_adversarial.get(method)
    if runs is None and method == out.partners_from:
        runs = {
            a: {"val": adv_col["val"][a], "test": adv_col["test"][a]}
            for a in out.attributes
            if adv_col["val"][a] is not None
        }
    runs = runs or {}
    needs = lambda a: partners.get(a) is not None  # noqa: E731
    row = _mean_row(
        method, method, out,
        lambda a, split: runs[a][split] if a in runs and needs(a) else None,
        needs, bool(runs), bool(partners),
    )  # fmt: skip
    if row.status.startswith("missing") and method != out.partners_from and not out.missing.get("adversarial"):
        # the runs it has are another method's (same partner); its own were never submitted (reduce
        # lists submitted runs that did not commit)
        row.status = "not run"
    return row


def _comparison(out: ReduceOutput, adv_col: dict, yardstick: float | None) -> Comparison | None:
    """The numbers of the partner discovery section, or None with fewer than two methods."""
    sources = out.partner_sources  # the planning method's among them: out.partners derives from it
    if len(sources) < 2:
        return None
    methods = [m for m in PARTNER_METHODS if m in sources] + sorted(m for m in sources if m not in PARTNER_METHODS)
    ref = sources.get("pairwise")
    per_attr = [
        AttributePartners(
            i,
            a,
            partners={meth: sources[meth].get(a, "?") for meth in methods},
            rho={meth: _method_spearman(out, meth, a) for meth in methods if meth != "pairwise"},
        )
        for i, a in enumerate(out.attributes, 1)
    ]
    summary = []
    for meth in methods:
        agree = None
        if ref is not None and meth != "pairwise":
            agree = sum(1 for a in out.attributes if sources[meth].get(a, "?") == ref.get(a, "?") != "?")
        rhos = [r.rho[meth] for r in per_attr if r.rho.get(meth) is not None]
        if meth == "correlation":
            runs, seconds = 0, 0.0
        else:
            runs, seconds = out.stage_runs.get(meth), out.stage_seconds.get(meth)
        summary.append(
            MethodSummary(
                method=meth,
                agreement=agree,
                rho_mean=sum(rhos) / len(rhos) if rhos else None,
                rho_n=len(rhos),
                adversarial=_method_adversarial_row(out, meth, sources[meth], adv_col),
                runs=runs,
                seconds=seconds,
                ratio=None if seconds is None or not yardstick else seconds / yardstick,
            )
        )
    return Comparison(methods, per_attr, summary)


# -- matrices and the label-correlation scatter --------------------------------------------------------


@dataclass(frozen=True)
class ScatterPoint:
    a: str
    b: str
    corr: float  # Pearson r of the training labels of a and b
    change: float  # relative change of a's val accuracy when trained with b, in %


def _relative(out: ReduceOutput) -> Matrix:
    """[i][j] = 100 * (pair_val[a_i][a_j] - single_val[a_i]) in percentage points; None on the
    diagonal and where a run is missing."""
    rows = []
    for a in out.attributes:
        single, pair = out.single_val.get(a), out.pair_val.get(a, {})
        rows.append(
            [None if b == a or single is None or b not in pair else 100.0 * (pair[b] - single) for b in out.attributes]
        )
    return rows


def _scatter(out: ReduceOutput) -> list[ScatterPoint]:
    """Every ordered pair a != b with a label correlation, a pairwise run and a's single-task
    accuracy, in attribute order."""
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
            points.append(ScatterPoint(a, b, float(corr), 100.0 * (pair - single) / single))
    return points


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson r, or None with fewer than 3 points or a constant input (r undefined)."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    r = float(pearsonr(xs, ys)[0])
    return r if math.isfinite(r) else None


# -- everything --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    out: ReduceOutput  # the plain values the sections show as they are
    val: Table3
    test: Table3
    drop_significant: dict[str, bool | None]  # attribute -> see _drop_significant
    ablations: list[MeanRow]  # the paper's Table 1, in its order
    ours: Ours
    baselines: list[MeanRow]
    z_tests: list[ZTest]
    comparison: Comparison | None  # None with fewer than two partner sources
    yardstick: float | None  # seconds of one ordinary run (the multi-task run)
    relative: Matrix  # pairwise relative to single-task, percentage points
    affinity: Matrix  # Z(a_j -> a_i)
    scatter: list[ScatterPoint]
    scatter_r: float | None

    def ablation(self, key: str) -> MeanRow:
        return next(r for r in self.ablations if r.key == key)


def analyse(out: ReduceOutput) -> Analysis:
    val, test = _table3(out, "val"), _table3(out, "test")
    adv_col = {t.split: {r.name: r.adv for r in t.rows} for t in (val, test)}
    ablations = _ablation_rows(out, adv_col)
    ours = _ours(out, next(r for r in ablations if r.key == "adversarial"))
    baselines = _baselines(ablations, val, test)
    multi_s, multi_n = out.stage_seconds.get("multi"), out.stage_runs.get("multi")
    yardstick = multi_s / multi_n if multi_s and multi_n else None
    scatter = _scatter(out)
    return Analysis(
        out=out,
        val=val,
        test=test,
        drop_significant=_drop_significant(out),
        ablations=ablations,
        ours=ours,
        baselines=baselines,
        z_tests=_z_tests(out, ours, baselines),
        comparison=_comparison(out, adv_col, yardstick),
        yardstick=yardstick,
        relative=_relative(out),
        affinity=[[None if b == a else out.affinity.get(a, {}).get(b) for b in out.attributes] for a in out.attributes],
        scatter=scatter,
        scatter_r=_pearson([p.corr for p in scatter], [p.change for p in scatter]),
    )

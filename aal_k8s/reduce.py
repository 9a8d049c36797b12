"""Reduce committed runs into the paper's tables and the final model choice.

* pairwise matrix: ``acc[a][b]`` = validation accuracy of a when trained together with b
  (diagonal = single-task), the paper's Table 4;
* most negative partner of each attribute: the b with the lowest ``acc[a][b] - acc[a][a]``, only
  if that difference is < 0 (else none, like DukeMTMC attribute 14); ties go to the lower index;
* lambda chosen on validation per attribute (ties go to the first lambda of the grid);
* final classifier per attribute: with ``final_selection=best_on_val`` the better of the
  single-task and the chosen adversarial model on validation (ties keep single-task); with
  ``adversarial`` the adversarial model whenever one exists (the paper's protocol).

Only committed runs are read; runs the plan expects but the store lacks are listed as missing.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field

from aal_k8s.config import Config
from aal_k8s.data import attribute_names
from aal_k8s.errors import CorruptRecordError, StageOrderError, StoreError
from aal_k8s.planner import plan_stage
from aal_k8s.runspec import ABLATION_STAGES
from aal_k8s.store import ExperimentStore


@dataclass
class Choice:
    attribute: str
    source: str  # "single" | "adversarial"
    run_id: str
    partner: str | None
    lam: float | None
    val: float
    test: float


@dataclass
class ReduceOutput:
    dataset: str
    attributes: list[str]
    single_val: dict[str, float] = field(default_factory=dict)
    single_test: dict[str, float] = field(default_factory=dict)
    pair_val: dict[str, dict[str, float]] = field(default_factory=dict)  # [a][b]: a trained with b
    pair_test: dict[str, dict[str, float]] = field(default_factory=dict)
    multi_val: dict[str, float] = field(default_factory=dict)  # the one all-attribute run
    multi_test: dict[str, float] = field(default_factory=dict)
    partners: dict[str, str | None] = field(default_factory=dict)
    adversarial: dict[str, dict[str, dict]] = field(default_factory=dict)  # [a][str(lam)] -> run
    chosen_lambda: dict[str, float] = field(default_factory=dict)
    final: dict[str, Choice] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)  # stage -> run ids not committed
    failed: dict[str, str] = field(default_factory=dict)  # run id -> last failure message
    # -- partner discovery (issue: affinity stage) --------------------------------------------------
    partners_from: str = "pairwise"  # the method whose partners plan the adversarial stage
    partner_sources: dict[str, dict[str, str | None]] = field(default_factory=dict)  # method -> a -> partner
    label_corr: dict[str, dict[str, float]] = field(default_factory=dict)  # [a][b]: Pearson r of train labels
    affinity: dict[str, dict[str, float]] = field(default_factory=dict)  # [a][b]: Z(b -> a), updating for b on a's loss
    # method -> a -> best-on-val adversarial run with that method's partner:
    # {"partner", "lam", "val", "test", "run_id"} (only where such runs are committed)
    method_adversarial: dict[str, dict[str, dict]] = field(default_factory=dict)
    # -- ablations (the paper's Table 1) ------------------------------------------------------------
    group_partners: dict[str, list[str]] = field(default_factory=dict)  # a -> every b that lowers a (Table 5)
    # stage (gan | wgan | shared | group) -> a -> {"val", "test", "run_id", "auxiliary": [...], "lam"}
    ablations: dict[str, dict[str, dict]] = field(default_factory=dict)
    # -- cost and sizes -----------------------------------------------------------------------------
    stage_seconds: dict[str, float] = field(default_factory=dict)  # stage -> sum of its committed runs' total seconds
    stage_runs: dict[str, int] = field(default_factory=dict)  # stage -> committed runs
    eval_images: dict[str, int] = field(default_factory=dict)  # "val"/"test" -> images per split (z-test N / M)
    # -- lambda by successive halving (adversarial.lambda_search: halving; aal_k8s.halving.summary)
    halving: dict[str, dict] = field(default_factory=dict)  # a -> rungs, decisions, survivors

    def to_json(self) -> dict:
        d = asdict(self)
        if not d["halving"]:
            del d["halving"]  # grid: the summary stays byte for byte what it was before halving existed
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ReduceOutput":
        d = dict(d)
        d["final"] = {a: Choice(**c) for a, c in d.get("final", {}).items()}
        return cls(**d)


SUMMARY = ("reduce", "summary.json")
SUMMARY_SHA = "summary_sha256"  # the summary's checksum of itself (aal_k8s.checksums.seal)


def read_summary(exp: ExperimentStore) -> dict | None:
    """The stored reduce output (its checksum verified), or None before the first reduce."""
    return exp.get_sealed(*SUMMARY, field=SUMMARY_SHA, what="reduce summary")


def load_reduce(exp: ExperimentStore) -> ReduceOutput:
    """The stored reduce output as a ReduceOutput; ``StageOrderError`` before the first reduce."""
    summary = read_summary(exp)
    where = exp.store.url(exp.key(*SUMMARY))
    if summary is None:
        raise StageOrderError(f"experiment {exp.experiment!r} has no reduce output: run `aal-k8s reduce` first")
    try:
        return ReduceOutput.from_json(summary)
    except (TypeError, AttributeError):  # sealed, so written by another version of aal-k8s
        raise StoreError(f"{where}: not a reduce summary of this version; run `aal-k8s reduce` again") from None


def most_negative_partner(attr: str, single: float, row: dict[str, float], order: list[str]) -> str | None:
    """The partner with the largest accuracy drop below single-task, or None if none drops."""
    best, best_delta = None, 0.0
    for b in order:
        if b == attr or b not in row:
            continue
        delta = row[b] - single
        if delta < best_delta:
            best, best_delta = b, delta
    return best


def choose_lambda(runs: dict[float, dict]) -> float | None:
    """The lambda with the highest validation accuracy; ties go to the first in grid order."""
    best, best_val = None, -1.0
    for lam, r in runs.items():
        if r["val"] > best_val:
            best, best_val = lam, r["val"]
    return best


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


def _matrix(tasks: list[str], z: list[list[float]], transpose: bool = False) -> dict[str, dict[str, float]]:
    """``[row task][col task]`` dict of a square list matrix (``transpose``: ``[col][row]``)."""
    out: dict[str, dict[str, float]] = {}
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            if i != j:
                r, c = (b, a) if transpose else (a, b)
                out.setdefault(r, {})[c] = float(z[i][j])
    return out


PARTNER_METHODS = ("pairwise", "affinity", "correlation")


def reduce_experiment(exp: ExperimentStore, cfg: Config) -> ReduceOutput:
    attrs = attribute_names(cfg.dataset.name)
    out = ReduceOutput(dataset=cfg.dataset.name, attributes=attrs, partners_from=cfg.adversarial.partners_from)
    seen: set[str] = set()  # run ids already counted in stage_seconds

    def committed(stage: str, specs, expected: bool = True) -> list[tuple]:
        """Committed (spec, record) pairs of ``specs``. Runs not committed are listed as missing
        when ``expected`` (the paper's stages) or when they were submitted (a spec is stored)."""
        found = []
        for spec in specs:
            try:
                rec = exp.read_metrics(spec.run_id)
            except CorruptRecordError as e:  # counted as missing; submit moves it aside and retrains
                out.missing.setdefault(stage, []).append(spec.run_id)
                out.failed[spec.run_id] = f"{e.message}; `aal-k8s submit --stage {stage}` retrains the run"
                continue
            if rec is None:
                if expected or exp.store.exists(exp.run_key(spec.run_id, "spec.json")):
                    out.missing.setdefault(stage, []).append(spec.run_id)
                failure = exp.read_failure(spec.run_id)
                if failure:
                    out.failed[spec.run_id] = failure["message"]
                continue
            found.append((spec, rec))
            if spec.run_id not in seen:
                seen.add(spec.run_id)
                out.stage_seconds[stage] = out.stage_seconds.get(stage, 0.0) + float(rec.get("timings", {}).get("total", 0.0))
                out.stage_runs[stage] = out.stage_runs.get(stage, 0) + 1
            for split, n in rec.get("split_sizes", {}).items():
                if split in ("val", "test"):
                    out.eval_images.setdefault(split, int(n))
        return found

    for spec, rec in committed("single", plan_stage("single", cfg)):
        a = spec.primary[0]
        out.single_val[a] = rec["val_acc"][a]
        out.single_test[a] = rec["test_acc"][a]
    for spec, rec in committed("pairwise", plan_stage("pairwise", cfg)):
        a, b = spec.primary
        for x, y in ((a, b), (b, a)):
            out.pair_val.setdefault(x, {})[y] = rec["val_acc"][x]
            out.pair_test.setdefault(x, {})[y] = rec["test_acc"][x]
    for _, rec in committed("multi", plan_stage("multi", cfg)):
        out.multi_val, out.multi_test = dict(rec["val_acc"]), dict(rec["test_acc"])
        if rec.get("label_corr"):
            out.label_corr = _matrix(rec["heads"], rec["label_corr"])
    for _, rec in committed("affinity", plan_stage("affinity", cfg), expected=False):
        aff = rec["affinity"]
        out.affinity = _matrix(aff["tasks"], aff["z"], transpose=True)  # [a][b] = Z(b -> a)
        if not out.label_corr and rec.get("label_corr"):
            out.label_corr = _matrix(rec["heads"], rec["label_corr"])

    # -- partners, by every method whose inputs are complete
    if not out.missing.get("single") and not out.missing.get("pairwise"):
        out.partner_sources["pairwise"] = {
            a: most_negative_partner(a, out.single_val[a], out.pair_val.get(a, {}), attrs) for a in attrs
        }
        out.group_partners = {
            a: [b for b in attrs if b != a and out.pair_val.get(a, {}).get(b, 1.0) < out.single_val[a]] for a in attrs
        }
    if out.affinity:
        out.partner_sources["affinity"] = {a: most_negative_partner(a, 0.0, out.affinity.get(a, {}), attrs) for a in attrs}
    if out.label_corr:
        out.partner_sources["correlation"] = {a: most_correlated_partner(a, out.label_corr.get(a, {}), attrs) for a in attrs}
    out.partners = dict(out.partner_sources.get(out.partners_from, {}))
    if not out.partners:
        return out

    # -- adversarial runs of every method's partners (the chosen method's missing runs are listed)
    halving, stopped = {}, set()  # a -> the lambdas to choose among; runs halving stopped at a rung
    if cfg.adversarial.lambda_search == "halving":
        every = plan_stage("adversarial", cfg, out.partners)
        alive, halving = _halving(exp, cfg, every, out)
        stopped = {s.run_id for s in every} - {s.run_id for s in alive}
    for method in PARTNER_METHODS:
        partners = out.partner_sources.get(method)
        if partners is None:
            continue
        chosen = method == out.partners_from
        runs: dict[str, dict[float, dict]] = {}
        # a stopped run never commits: not missing, whichever method's partner it also is
        specs = [s for s in plan_stage("adversarial", cfg, partners) if s.run_id not in stopped]
        expected_lams = halving if chosen else {}  # a -> the lambdas that must all commit before one is chosen
        for spec, rec in committed("adversarial", specs, expected=chosen):
            a = spec.primary[0]
            runs.setdefault(a, {})[spec.lam] = {
                "lam": spec.lam,
                "run_id": spec.run_id,
                "partner": spec.auxiliary[0],
                "val": rec["val_acc"][a],
                "test": rec["test_acc"][a],
            }
        for a, by_lam in runs.items():
            lam = choose_lambda(by_lam)
            out.method_adversarial.setdefault(method, {})[a] = dict(by_lam[lam])
            if chosen:
                out.adversarial[a] = {repr(r["lam"]): {k: r[k] for k in ("lam", "run_id", "val", "test")} for r in by_lam.values()}
                if a in expected_lams:  # halving: among the last rung's survivors, once they all finished
                    if expected_lams[a] is not None and set(by_lam) == set(expected_lams[a]):
                        out.chosen_lambda[a] = lam
                elif len(by_lam) == len(cfg.adversarial.lambdas):  # lambda is chosen on the full grid only
                    out.chosen_lambda[a] = lam

    # -- ablations, at each attribute's chosen lambda (only once the adversarial stage is reduced)
    if out.chosen_lambda:
        for stage in ABLATION_STAGES:
            try:
                specs = plan_stage(stage, cfg, out.partners, lambdas=out.chosen_lambda, groups=out.group_partners or None)
            except StageOrderError:
                continue  # e.g. group without the pairwise stage, or lambdas not chosen for every attribute
            for spec, rec in committed(stage, specs, expected=False):
                a = spec.primary[0]
                out.ablations.setdefault(stage, {})[a] = {
                    "val": rec["val_acc"][a],
                    "test": rec["test_acc"][a],
                    "run_id": spec.run_id,
                    "auxiliary": list(spec.auxiliary),
                    "lam": spec.lam,
                }

    # -- the final model set
    for a in attrs:
        if a not in out.single_val:
            continue  # the single stage is incomplete: no final choice for a yet
        single_id = plan_stage("single", cfg, attributes=[a])[0].run_id
        single = Choice(a, "single", single_id, None, None, out.single_val[a], out.single_test[a])
        lam = out.chosen_lambda.get(a)
        if out.partners.get(a) and lam is None:
            continue  # its adversarial runs are not all committed yet
        if lam is None:
            out.final[a] = single
            continue
        r = out.adversarial[a][repr(lam)]
        adv = Choice(a, "adversarial", r["run_id"], out.partners[a], lam, r["val"], r["test"])
        if cfg.adversarial.final_selection == "adversarial" or adv.val > single.val:
            out.final[a] = adv
        else:
            out.final[a] = single
    out.missing = {stage: list(dict.fromkeys(ids)) for stage, ids in out.missing.items()}  # a run may serve two methods
    return out


def _halving(exp: ExperimentStore, cfg: Config, specs: list, out: ReduceOutput) -> tuple[list, dict]:
    """Halving's view of the adversarial runs: the runs still expected (a stopped run never commits
    and is not missing), each attribute's final survivors (None while rungs are undecided), and
    its decisions in ``out.halving``; the stopped runs' train time joins the stage's seconds."""
    from aal_k8s.halving import brackets, progress, summary

    keep, expected = [], {}
    for a, b in brackets(cfg, specs).items():
        keep += progress(exp, b).alive
        out.halving[a] = summary(exp, b)
        expected[a] = out.halving[a]["survivors"]
        if out.halving[a]["stopped_seconds"]:
            out.stage_seconds["adversarial"] = out.stage_seconds.get("adversarial", 0.0) + out.halving[a]["stopped_seconds"]
    return keep, expected


@dataclass
class PlanInputs:
    """What the stages after reduce are planned from (read back from the stored reduce output)."""

    partners: dict[str, str | None]
    lambdas: dict[str, float]
    groups: dict[str, list[str]] | None


_DISCOVERY = {
    "pairwise": "the single and pairwise stages",
    "affinity": "the affinity stage",
    "correlation": "the multi or affinity stage (label correlations are recorded there)",
}


def load_plan_inputs(exp: ExperimentStore, cfg: Config, stage: str) -> PlanInputs:
    """Partners by ``adversarial.partners_from``, chosen lambdas and groups from the stored reduce
    output; ``StageOrderError`` naming what to run when they are not there yet."""
    method = cfg.adversarial.partners_from
    summary = read_summary(exp) or {}
    partners = (summary.get("partner_sources") or {}).get(method)
    if partners is None:
        raise StageOrderError(
            f"stage {stage} needs the negative partners ({method}) of experiment {exp.experiment!r}: "
            f"run {_DISCOVERY[method]}, then `aal-k8s reduce`"
        )
    if stage != "adversarial" and summary.get("partners_from", "pairwise") != method:
        raise StageOrderError(
            f"stage {stage} runs at the lambdas chosen with {method} partners, but the reduce output of "
            f"experiment {exp.experiment!r} was made with {summary.get('partners_from')} partners: "
            f"run `aal-k8s reduce --partners-from {method}` first"
        )
    return PlanInputs(partners, summary.get("chosen_lambda") or {}, summary.get("group_partners") or None)


def pairwise_cells(out: ReduceOutput) -> list[list[float | None]]:
    """The paper's Table 4: ``[i][j]`` = val accuracy of attribute i trained with j, single-task on
    the diagonal, None where a run is missing."""
    return [
        [out.single_val.get(a) if b == a else out.pair_val.get(a, {}).get(b) for b in out.attributes]
        for a in out.attributes
    ]


def matrix_csv(out: ReduceOutput) -> str:
    """Row = attribute, column = partner, cell = val accuracy of the row attribute (diag = single)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["attribute", *out.attributes])
    for a, cells in zip(out.attributes, pairwise_cells(out)):
        w.writerow([a, *("" if c is None else f"{c:.6f}" for c in cells)])
    return buf.getvalue()


def final_csv(out: ReduceOutput) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "attribute", "source", "partner", "lambda", "val", "test", "run_id"])
    for i, a in enumerate(out.attributes, 1):
        c = out.final.get(a)
        if c is None:
            continue
        lam = "" if c.lam is None else f"{c.lam:g}"
        w.writerow([i, a, c.source, c.partner or "", lam, f"{c.val:.6f}", f"{c.test:.6f}", c.run_id])
    return buf.getvalue()


def write_reduce(exp: ExperimentStore, out: ReduceOutput) -> None:
    exp.put_sealed(*SUMMARY, obj=out.to_json(), field=SUMMARY_SHA)
    exp.put_text("reduce", "pairwise_matrix.csv", text=matrix_csv(out))
    if out.final:
        exp.put_text("reduce", "final.csv", text=final_csv(out))

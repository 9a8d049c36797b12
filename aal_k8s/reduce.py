"""Reduce committed runs into the paper's tables and the final model choice.

* pairwise matrix: ``acc[a][b]`` = validation accuracy of a when trained together with b
  (diagonal = single-task), the paper's Table 4;
* most negative partner of each attribute: the b with the lowest ``acc[a][b] - acc[a][a]``, only
  if that difference is < 0 (else none, like DukeMTMC attribute 14); ties go to the lower index;
  ``adversarial.min_drop`` raises the bar from 0, and ``adversarial.partner_test: mcnemar`` also
  asks McNemar's exact test on a's validation images (a alone vs a with b) for a significant drop:
  the partner is then the largest drop that passes. Whichever rule, the chosen partner's test is
  recorded (``partner_tests``) so the report can mark drops that are not significant;
* lambda chosen on validation per attribute (ties go to the first lambda of the grid);
* final classifier per attribute: with ``final_selection=best_on_val`` the better of the
  single-task and the chosen adversarial model on validation (ties keep single-task); with
  ``adversarial`` the adversarial model whenever one exists (the paper's protocol);
* paired comparison of the final set with each baseline on the test images (the validation split
  chose partners, lambdas and epochs): McNemar's exact test on the (image, attribute) predictions
  they disagree on, and a bootstrap interval over images of the accuracy difference.

Per-image correctness comes from each run's ``predictions.safetensors`` (``aal_k8s.predictions``);
runs committed before it existed simply have no paired tests.

Only committed runs are read; runs the plan expects but the store lacks are listed as missing.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field

from aal_k8s import stages
from aal_k8s.config import Config
from aal_k8s.data import attribute_names
from aal_k8s.errors import AALError, CorruptRecordError, StageOrderError, StoreError
# re-exported: reduce is where readers of the protocol look for the partner rules
from aal_k8s.partners import PARTNER_METHODS, most_correlated_partner, most_negative_partner  # noqa: F401
from aal_k8s.planner import plan_stage
from aal_k8s.significance import ALPHA
from aal_k8s.stages import ABLATION_STAGES
from aal_k8s.stages.base import GROUPS
from aal_k8s.store import ExperimentStore
from aal_k8s.version import code_version


@dataclass
class Choice:
    attribute: str
    source: str  # "single" | "adversarial"
    run_id: str
    partner: str | None
    lam: float | None
    val: float
    test: float


#: The config sections that decide results (the store, executor and cluster ones do not).
RESULT_SECTIONS = ("dataset", "model", "train", "adversarial", "affinity")


@dataclass
class Provenance:
    """Where a reduce output comes from, for the report's provenance paragraph."""

    code: str = ""  # aal-k8s version (and git commit) that reduced the runs
    config: dict = field(default_factory=dict)  # RESULT_SECTIONS of the config
    split_sizes: dict[str, int] = field(default_factory=dict)  # images per split (train/val/test)
    first_commit: str = ""  # committed_at of the oldest and the newest run read (UTC)
    last_commit: str = ""


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
    # -- paired tests on per-image predictions (runs committed with predictions.safetensors) ------
    partner_test: str = "none"  # adversarial.partner_test the pairwise partners were chosen with
    min_drop: float = 0.0  # adversarial.min_drop, likewise
    # a -> b -> {"drop", "only_alone", "only_with", "p"}: McNemar on a's val images, a alone vs a
    # with b (only_alone: right alone, wrong with b); the chosen partner, and under mcnemar every
    # candidate examined
    partner_tests: dict[str, dict[str, dict]] = field(default_factory=dict)
    # baseline key (single, multi_partner, multi_all, adversarial, gan, ...) -> {"images",
    # "attributes", "only_final", "only_baseline", "p", "diff", "ci_low", "ci_high"}: the final set
    # against that baseline on test, paired by image and attribute
    paired_test: dict[str, dict] = field(default_factory=dict)
    final_same_as: list[str] = field(default_factory=list)  # baseline keys whose runs are the final set's
    # a -> {"val": [val accuracy of a per epoch], "best_epoch": n}: the final classifier's training curve
    final_curves: dict[str, dict] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)
    # -- lambda by successive halving (adversarial.lambda_search: halving; aal_k8s.halving.summary)
    halving: dict[str, dict] = field(default_factory=dict)  # a -> rungs, decisions, survivors
    # -- the final comparison over seeds (adversarial.seeds > 1; aal_k8s.stages.seeds)
    # str(seed) -> a -> {"final", "single"}: test accuracy of a's final-kind classifier (single or
    # adversarial at the chosen lambda, as reduce chose it) and of its single-task baseline trained
    # with that seed; only seeds whose runs are all committed
    seeds: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def partners(self) -> dict[str, str | None]:
        """Each attribute's partner for the adversarial stage: the planning method's
        (``partners_from``) entry of ``partner_sources``; empty until that method's inputs are complete."""
        return self.partner_sources.get(self.partners_from, {})

    def final_sources(self) -> dict[str, str]:
        """Each attribute's kind of final classifier ("single" | "adversarial"), what stage seeds replicates."""
        return {a: c.source for a, c in self.final.items()}

    def to_json(self) -> dict:
        d = asdict(self)
        d["partners"] = dict(self.partners)  # derived, but the summary has always listed it for its readers
        for key in ("halving", "seeds"):
            if not d[key]:
                del d[key]  # not used: the summary stays byte for byte what it was before they existed
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ReduceOutput":
        d = dict(d)
        d.pop("partners", None)  # derived from partner_sources (see ``partners``)
        d["final"] = {a: Choice(**c) for a, c in d.get("final", {}).items()}
        d["provenance"] = Provenance(**d.get("provenance", {}))
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


def choose_lambda(runs: dict[float, dict]) -> float | None:
    """The lambda with the highest validation accuracy; ties go to the first in grid order."""
    best, best_val = None, -1.0
    for lam, r in runs.items():
        if r["val"] > best_val:
            best, best_val = lam, r["val"]
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


def reduce_experiment(exp: ExperimentStore, cfg: Config) -> ReduceOutput:
    attrs = attribute_names(cfg.dataset.name)
    adv_cfg = cfg.adversarial
    config = cfg.to_dict()
    out = ReduceOutput(
        dataset=cfg.dataset.name, attributes=attrs, partners_from=adv_cfg.partners_from,
        partner_test=adv_cfg.partner_test, min_drop=adv_cfg.min_drop,
        provenance=Provenance(code=code_version(), config={k: config[k] for k in RESULT_SECTIONS}),
    )  # fmt: skip
    prov = out.provenance
    seen: set[str] = set()  # run ids already counted in stage_seconds
    preds = _Predictions(exp)
    single_run: dict[str, str] = {}  # a -> its single-task run
    pair_run: dict[tuple[str, str], str] = {}  # (a, b) -> the pairwise run of a and b
    multi_run: str | None = None

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
            preds.records[spec.run_id] = rec
            if spec.run_id not in seen:
                seen.add(spec.run_id)
                out.stage_seconds[stage] = out.stage_seconds.get(stage, 0.0) + float(rec.get("timings", {}).get("total", 0.0))
                out.stage_runs[stage] = out.stage_runs.get(stage, 0) + 1
            for split, n in rec.get("split_sizes", {}).items():
                prov.split_sizes.setdefault(split, int(n))
                if split in ("val", "test"):
                    out.eval_images.setdefault(split, int(n))
            when = rec.get("committed_at", "")  # ISO 8601 UTC: compares as text
            if when:
                prov.first_commit = min(prov.first_commit or when, when)
                prov.last_commit = max(prov.last_commit, when)
        return found

    for spec, rec in committed("single", plan_stage("single", cfg)):
        a = spec.primary[0]
        single_run[a] = spec.run_id
        out.single_val[a] = rec["val_acc"][a]
        out.single_test[a] = rec["test_acc"][a]
    for spec, rec in committed("pairwise", plan_stage("pairwise", cfg)):
        a, b = spec.primary
        for x, y in ((a, b), (b, a)):
            pair_run[(x, y)] = spec.run_id
            out.pair_val.setdefault(x, {})[y] = rec["val_acc"][x]
            out.pair_test.setdefault(x, {})[y] = rec["test_acc"][x]
    for spec, rec in committed("multi", plan_stage("multi", cfg)):
        multi_run = spec.run_id
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
        out.partner_sources["pairwise"] = _pairwise_partners(out, cfg, preds, single_run, pair_run)
        out.group_partners = {
            a: [b for b in attrs if b != a and out.pair_val.get(a, {}).get(b, 1.0) < out.single_val[a]] for a in attrs
        }
    if out.affinity:
        out.partner_sources["affinity"] = {a: most_negative_partner(a, 0.0, out.affinity.get(a, {}), attrs) for a in attrs}
    if out.label_corr:
        out.partner_sources["correlation"] = {a: most_correlated_partner(a, out.label_corr.get(a, {}), attrs) for a in attrs}
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
    if cfg.adversarial.seeds > 1 and out.final and len(out.final) == len(attrs):
        _seed_comparison(out, cfg, committed)
    out.missing = {stage: list(dict.fromkeys(ids)) for stage, ids in out.missing.items()}  # a run may serve two methods
    for a, c in out.final.items():
        history = (preds.records.get(c.run_id) or {}).get("history") or []
        if history:
            out.final_curves[a] = {"val": [h["val_acc"][a] for h in history], "best_epoch": preds.records[c.run_id]["best_epoch"]}
    if out.final and len(out.final) == len(attrs):
        baselines = _baseline_runs(out, single_run, pair_run, multi_run)
        final_runs = {a: out.final[a].run_id for a in attrs}
        out.final_same_as = [k for k, runs in baselines.items() if runs == final_runs]
        out.paired_test = _paired_tests(out, preds, {k: r for k, r in baselines.items() if k not in out.final_same_as})
    return out


def _seed_comparison(out: ReduceOutput, cfg: Config, committed) -> None:
    """``out.seeds``: the final set and the single-task baselines on test, per seed: train.seed's
    from the protocol's runs, the others from stage seeds (each attribute keeps the kind of final
    classifier, single or adversarial at the chosen lambda, that validation chose for it)."""
    try:
        specs = plan_stage("seeds", cfg, out.partners, lambdas=out.chosen_lambda, finals=out.final_sources())
    except StageOrderError:
        return
    out.seeds[str(cfg.train.seed)] = {a: {"final": c.test, "single": out.single_test[a]} for a, c in out.final.items()}
    by_seed: dict[str, dict[str, dict[str, float]]] = {}
    for spec, rec in committed("seeds", specs, expected=True):
        a = spec.primary[0]
        by_seed.setdefault(str(spec.seed), {}).setdefault(a, {})[spec.mode] = rec["test_acc"][a]
    for seed, runs in sorted(by_seed.items(), key=lambda kv: int(kv[0])):
        row = {
            a: {"final": runs[a][out.final[a].source], "single": runs[a]["single"]}
            for a in out.attributes
            if out.final[a].source in runs.get(a, {}) and "single" in runs.get(a, {})
        }
        if len(row) == len(out.attributes):
            out.seeds[seed] = row


class _Predictions:
    """Per-image correctness (``aal_k8s.predictions``) of committed runs, each artifact read once;
    None for runs committed without one."""

    def __init__(self, exp: ExperimentStore):
        self.exp = exp
        self.records: dict[str, dict] = {}  # run id -> commit record (filled by reduce as it reads them)
        self._cache: dict[str, dict | None] = {}

    def get(self, run_id: str, split: str, head: str):
        if run_id not in self._cache:
            from aal_k8s import predictions

            rec = self.records.get(run_id) or self.exp.read_metrics(run_id) or {}
            meta = (rec.get("artifacts") or {}).get(predictions.ARTIFACT)
            data = None
            if meta is not None:
                key = self.exp.artifact_key(run_id, predictions.ARTIFACT, rec)
                data = predictions.unpack(self.exp.read_verified(key, meta["sha256"], meta["size"]))
            self._cache[run_id] = data
        data = self._cache[run_id]
        return None if data is None else data.get(split, {}).get(head)


def _pairwise_partners(out: ReduceOutput, cfg: Config, preds: _Predictions, single_run, pair_run) -> dict[str, str | None]:
    """Each attribute's most negative pairwise partner under ``adversarial.min_drop`` and
    ``adversarial.partner_test``; fills ``out.partner_tests``."""
    from aal_k8s.significance import mcnemar_exact

    adv, attrs = cfg.adversarial, out.attributes
    lacking: list[str] = []  # runs committed without per-image predictions

    def test(a: str, b: str) -> dict | None:
        alone = preds.get(single_run[a], "val", a)
        together = preds.get(pair_run[(a, b)], "val", a)
        if alone is None or together is None:
            lacking.extend(r for r, p in ((single_run[a], alone), (pair_run[(a, b)], together)) if p is None)
            return None
        t = mcnemar_exact(alone, together)
        entry = {"drop": out.single_val[a] - out.pair_val[a][b], "only_alone": t.only_first, "only_with": t.only_second, "p": t.p}
        out.partner_tests.setdefault(a, {})[b] = entry
        return entry

    def significant_drop(a: str, b: str) -> bool:  # candidates drop: more images lost than gained
        t = test(a, b)
        return t is not None and t["p"] < ALPHA

    partners = {}
    for a in attrs:
        row = out.pair_val.get(a, {})
        if adv.partner_test == "mcnemar":
            partners[a] = most_negative_partner(a, out.single_val[a], row, attrs, adv.min_drop, lambda b, a=a: significant_drop(a, b))
        else:
            partners[a] = most_negative_partner(a, out.single_val[a], row, attrs, adv.min_drop)
            if partners[a] is not None:
                test(a, partners[a])  # recorded for the report; the paper's rule does not use it
    if adv.partner_test == "mcnemar" and lacking:
        ids = sorted(set(lacking))
        more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
        raise AALError(
            f"adversarial.partner_test=mcnemar needs per-image validation predictions, which run(s) "
            f"{', '.join(ids[:3])}{more} were committed without (re-run them, or use partner_test=none)"
        )
    return partners


def _baseline_runs(out: ReduceOutput, single_run, pair_run, multi_run) -> dict[str, dict[str, str]]:
    """Baseline key -> attribute -> the run whose head for that attribute is the baseline's
    prediction: the same choices as the report's rows (an attribute that the baseline trains no run
    for, e.g. one without a partner, counts with its single-task run). Incomplete baselines are left out."""
    attrs = out.attributes
    with_partner = {a: out.partners.get(a) for a in attrs}
    runs: dict[str, dict[str, str | None]] = {
        "single": {a: single_run.get(a) for a in attrs},
        "multi_partner": {a: pair_run.get((a, p)) if p else single_run.get(a) for a, p in with_partner.items()},
        "multi_all": {a: multi_run for a in attrs},
        "adversarial": {
            a: (out.adversarial.get(a, {}).get(repr(out.chosen_lambda.get(a))) or {}).get("run_id") if p else single_run.get(a)
            for a, p in with_partner.items()
        },
    }
    for stage, entries in out.ablations.items():
        grouped = GROUPS in stages.get(stage).needs  # planned against every negative partner, not one
        needs = (lambda a: bool(out.group_partners.get(a))) if grouped else (lambda a: bool(with_partner[a]))
        runs[stage] = {a: (entries.get(a) or {}).get("run_id") if needs(a) else single_run.get(a) for a in attrs}
    return {k: v for k, v in runs.items() if all(v.values())}  # type: ignore[misc]


def _paired_tests(out: ReduceOutput, preds: _Predictions, baselines: dict[str, dict[str, str]]) -> dict[str, dict]:
    """The final set against each of ``baselines`` on test (see ``ReduceOutput.paired_test``);
    baselines lacking per-image predictions are left out."""
    import numpy as np

    from aal_k8s.significance import bootstrap_interval, mcnemar_exact

    attrs = out.attributes

    def correct(runs: dict[str, str]):
        cols = [preds.get(runs[a], "test", a) for a in attrs]
        return None if any(c is None for c in cols) else np.stack(cols, axis=1)  # [images, attributes]

    final = correct({a: out.final[a].run_id for a in attrs})
    if final is None:
        return {}
    result = {}
    for key, runs in baselines.items():
        base = correct(runs)
        if base is None or base.shape != final.shape:
            continue
        t = mcnemar_exact(final, base)
        per_image = final.mean(axis=1) - base.mean(axis=1)  # share of attributes right, final minus baseline
        lo, hi = bootstrap_interval(per_image)
        result[key] = {
            "images": int(final.shape[0]), "attributes": len(attrs), "only_final": t.only_first,
            "only_baseline": t.only_second, "p": t.p, "diff": float(per_image.mean()), "ci_low": lo, "ci_high": hi,
        }  # fmt: skip
    return result
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
    finals: dict[str, str]  # attribute -> "single" | "adversarial", where reduce has chosen


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
    finals = {a: c["source"] for a, c in (summary.get("final") or {}).items()}
    return PlanInputs(partners, summary.get("chosen_lambda") or {}, summary.get("group_partners") or None, finals)


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

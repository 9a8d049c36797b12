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
from aal_k8s.errors import StageOrderError
from aal_k8s.planner import plan_stage
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

    @property
    def partners_ready(self) -> bool:
        """Partners are known once every single-task and pairwise run is committed."""
        return bool(self.partners) and not self.missing.get("single") and not self.missing.get("pairwise")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ReduceOutput":
        d = dict(d)
        d["final"] = {a: Choice(**c) for a, c in d.get("final", {}).items()}
        return cls(**d)


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


def reduce_experiment(exp: ExperimentStore, cfg: Config) -> ReduceOutput:
    attrs = attribute_names(cfg.dataset.name)
    out = ReduceOutput(dataset=cfg.dataset.name, attributes=attrs)

    def committed(stage: str, specs) -> list[tuple]:
        found = []
        for spec in specs:
            rec = exp.read_metrics(spec.run_id)
            if rec is None:
                out.missing.setdefault(stage, []).append(spec.run_id)
                failure = exp.read_failure(spec.run_id)
                if failure:
                    out.failed[spec.run_id] = failure["message"]
            else:
                found.append((spec, rec))
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

    if not out.missing.get("single") and not out.missing.get("pairwise"):
        out.partners = {
            a: most_negative_partner(a, out.single_val[a], out.pair_val.get(a, {}), attrs) for a in attrs
        }
    if not out.partners:
        return out

    for spec, rec in committed("adversarial", plan_stage("adversarial", cfg, out.partners)):
        a = spec.primary[0]
        out.adversarial.setdefault(a, {})[repr(spec.lam)] = {
            "lam": spec.lam,
            "run_id": spec.run_id,
            "val": rec["val_acc"][a],
            "test": rec["test_acc"][a],
        }
    for a in attrs:
        single_id = plan_stage("single", cfg, attributes=[a])[0].run_id
        single = Choice(a, "single", single_id, None, None, out.single_val[a], out.single_test[a])
        runs = {r["lam"]: r for r in out.adversarial.get(a, {}).values()}
        lam = choose_lambda(runs)
        if lam is None:
            out.final[a] = single
            continue
        out.chosen_lambda[a] = lam
        r = runs[lam]
        adv = Choice(a, "adversarial", r["run_id"], out.partners[a], lam, r["val"], r["test"])
        if cfg.adversarial.final_selection == "adversarial" or adv.val > single.val:
            out.final[a] = adv
        else:
            out.final[a] = single
    return out


def load_partners(exp: ExperimentStore) -> dict[str, str | None]:
    """Partners from the stored reduce output; ``StageOrderError`` when reduce has not run."""
    summary = exp.get_json("reduce", "summary.json")
    if not summary or not summary.get("partners"):
        raise StageOrderError(
            f"stage adversarial needs the negative partners of experiment {exp.experiment!r}: "
            "run the single and pairwise stages, then `aal-k8s reduce`"
        )
    return summary["partners"]


def matrix_csv(out: ReduceOutput) -> str:
    """Row = attribute, column = partner, cell = val accuracy of the row attribute (diag = single)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["attribute", *out.attributes])
    for a in out.attributes:
        row = out.pair_val.get(a, {})
        cells = [out.single_val.get(a) if b == a else row.get(b) for b in out.attributes]
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
    exp.put_json("reduce", "summary.json", obj=out.to_json())
    exp.put_text("reduce", "pairwise_matrix.csv", text=matrix_csv(out))
    if out.final:
        exp.put_text("reduce", "final.csv", text=final_csv(out))

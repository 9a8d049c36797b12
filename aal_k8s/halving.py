"""λ by successive halving (``adversarial.lambda_search: halving``).

The rule is ASHA's / Hyperband's: every λ of an attribute trains to the first rung (an epoch), the
best ``floor(n / eta)`` (at least one) on validation go on from their rung checkpoint to the next
rung, and so on; the survivors of the last rung train to ``train.epochs`` and commit as usual.

Run identity. A halving run *is* the grid run with the same λ: same RunSpec, same run id. A rung
does not change what a run computes: the lr schedule, the data order and the epochs counted are
those of the full run (``train.epochs``, decay at ``train.lr_decay_epoch``), the rung only stops
the worker after an epoch, and a resumed run ends bitwise as an uninterrupted one on CPU (the
checkpoint contract of ``aal_k8s.train``). So a survivor's result is exactly the grid run's, and the two
searches share their committed runs and checkpoints: switching an experiment from halving to grid
only trains the stopped λ's remaining epochs, from their rung checkpoints. A run stopped at a rung
is never committed (it has no result), only its checkpoints and rung record stay.

Store records (all create-only, so a rerun after a crash reads what was decided and never decides
again; and what is decided is a function of the rung scores, so a decision that was not recorded
yet comes out the same when taken again)::

    runs/<id>/rungs/epoch-0002.json          the run's validation history up to the rung epoch
    halving/<attribute>/<bracket>/rung-0002.json
                                             one rung's decision: entrants, scores, survivors

``<bracket>`` hashes the attribute's run ids, the rungs and eta, so another λ grid or eta gets its
own decisions rather than someone else's. A λ's score at a rung is the mean primary validation
accuracy of its best epoch so far (the rule the final choice uses), ties going to the earlier λ of
``adversarial.lambdas``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from aal_k8s.errors import AALError
from aal_k8s.runspec import RunSpec


def automatic_rungs(n: int, epochs: int, eta: int) -> list[int]:
    """Hyperband's bracket with ``epochs`` as the maximum resource: as many rungs as halvings
    take ``n`` λ to one, rung k at ``epochs / eta^(r - k)`` (floored, at least epoch 1)."""
    r, m = 0, n
    while m > 1:
        m, r = keep_count(m, eta), r + 1
    return sorted({max(1, epochs // eta ** (r - k)) for k in range(r)} - {epochs})


def keep_count(n: int, eta: int) -> int:
    return max(1, n // eta)


def rungs_for(cfg) -> list[int]:
    adv = cfg.adversarial
    return list(adv.halving_rungs) or automatic_rungs(len(adv.lambdas), cfg.train.epochs, adv.halving_eta)


def run_epochs(n: int, epochs: int, eta: int, rungs: list[int]) -> int:
    """Epochs trained for one attribute's ``n`` λ (no epoch trained twice)."""
    total, alive, done = 0, n, 0
    for e in rungs:
        total += alive * (e - done)
        alive, done = keep_count(alive, eta), e
    return total + alive * (epochs - done)


def jobs_and_survivors(n: int, eta: int, rungs: list[int]) -> tuple[int, int]:
    """Worker processes (Kubernetes Jobs) one attribute's ``n`` λ take, one per run and rung plus
    the survivors' last one, and the survivors (the only runs that pay a test pass)."""
    jobs, alive = 0, n
    for _ in rungs:
        jobs += alive
        alive = keep_count(alive, eta)
    return jobs + alive, alive


def halving_fraction(cfg) -> float:
    """Epochs halving trains per attribute over the grid's (``aal-k8s plan`` scales by it)."""
    n, epochs, eta = len(cfg.adversarial.lambdas), cfg.train.epochs, cfg.adversarial.halving_eta
    return run_epochs(n, epochs, eta, rungs_for(cfg)) / (n * epochs)


def score_at(history: list[dict], primary, epoch: int) -> float | None:
    """Mean primary validation accuracy of the best epoch up to ``epoch``; None when the history
    does not reach it."""
    seen = [h for h in history if int(h["epoch"]) <= epoch]
    if len(seen) < epoch:
        return None
    return max(sum(h["val_acc"][p] for p in primary) / len(primary) for h in seen)


def decide(entrants: list[dict], eta: int) -> list[float]:
    """The λ that go on, in entrant (grid) order: the best ``keep_count`` by score, ties to the
    earlier entrant. ``entrants``: ``[{"lam", "score"}, ...]`` in grid order."""
    k = keep_count(len(entrants), eta)
    ranked = sorted(range(len(entrants)), key=lambda i: (-entrants[i]["score"], i))[:k]
    return [entrants[i]["lam"] for i in sorted(ranked)]


# -- store records -------------------------------------------------------------------------------
def rung_key(exp, run_id: str, epoch: int) -> str:
    return exp.run_key(run_id, f"rungs/epoch-{epoch:04d}.json")


def write_rung(exp, run_id: str, epoch: int, history: list[dict], seconds: float) -> None:
    """The run reached ``epoch``: its history up to it (create-only: the first attempt's stays)."""
    body = {"run_id": run_id, "epoch": epoch, "history": [h for h in history if int(h["epoch"]) <= epoch],
            "seconds": seconds, "attempt": exp.attempt}  # fmt: skip
    exp.store.put_if_absent(rung_key(exp, run_id, epoch), json.dumps(body, indent=1).encode())


def read_rung(exp, run_id: str, epoch: int) -> dict | None:
    key = rung_key(exp, run_id, epoch)
    return exp.get_json(*key.removeprefix(exp.experiment + "/").split("/")) if exp.store.exists(key) else None


def reached(exp, run_id: str, epoch: int) -> bool:
    return exp.is_committed(run_id) or exp.store.exists(rung_key(exp, run_id, epoch))


def _history(exp, spec: RunSpec, epoch: int) -> tuple[list[dict] | None, float]:
    """(history, seconds) of ``spec`` up to ``epoch``: its commit record (a grid run, or a survivor
    finished before a crash) or its rung record; (None, 0) when it has not got there."""
    rec = exp.read_metrics(spec.run_id)
    if rec is not None:
        return rec["history"], float(rec.get("timings", {}).get("total", 0.0))
    rung = read_rung(exp, spec.run_id, epoch)
    return (rung["history"], float(rung.get("seconds", 0.0))) if rung else (None, 0.0)


@dataclass
class Bracket:
    """One attribute's λ runs under successive halving."""

    attribute: str
    specs: list[RunSpec]  # grid order
    rungs: list[int]
    eta: int
    epochs: int

    @property
    def key(self) -> str:
        ident = {"runs": [s.run_id for s in self.specs], "rungs": self.rungs, "eta": self.eta}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]

    def decision_parts(self, epoch: int) -> tuple[str, ...]:
        return ("halving", self.attribute, self.key, f"rung-{epoch:04d}.json")


def brackets(cfg, specs: list[RunSpec]) -> dict[str, Bracket]:
    """The adversarial stage's runs grouped by attribute, each group in grid order."""
    out: dict[str, Bracket] = {}
    rungs, adv = rungs_for(cfg), cfg.adversarial
    for s in specs:
        a = s.primary[0]
        out.setdefault(a, Bracket(a, [], rungs, adv.halving_eta, cfg.train.epochs)).specs.append(s)
    return out


@dataclass
class Progress:
    """How far one bracket has got: the decisions recorded so far and the λ still alive."""

    bracket: Bracket
    decisions: list[dict] = field(default_factory=list)
    alive: list[RunSpec] = field(default_factory=list)

    @property
    def decided(self) -> bool:
        """Every rung decided: ``alive`` are the final survivors."""
        return len(self.decisions) == len(self.bracket.rungs)


def _read_decision(exp, b: Bracket, epoch: int, alive: list[RunSpec]) -> dict | None:
    d = exp.get_json(*b.decision_parts(epoch))
    if d is not None and [e["run_id"] for e in d["entrants"]] != [s.run_id for s in alive]:
        raise AALError(f"{exp.store.url(exp.key(*b.decision_parts(epoch)))}: recorded for other runs than "
                       f"the survivors of the rungs before it (the store was altered)")  # fmt: skip
    return d


def progress(exp, b: Bracket) -> Progress:
    """The bracket's recorded decisions, read in rung order."""
    p = Progress(b, alive=list(b.specs))
    for epoch in b.rungs:
        d = _read_decision(exp, b, epoch, p.alive)
        if d is None:
            break
        p.decisions.append(d)
        p.alive = [s for s in p.alive if s.lam in d["survivors"]]
    return p


def take_decision(exp, b: Bracket, epoch: int, alive: list[RunSpec]) -> dict | None:
    """Decide rung ``epoch`` from the scores in the store and record it (create-only; when another
    process recorded it first, that record is the decision). None when a run has no score yet."""
    entrants = []
    for s in alive:
        history, seconds = _history(exp, s, epoch)
        score = None if history is None else score_at(history, s.primary, epoch)
        if score is None:
            return None
        entrants.append({"lam": s.lam, "run_id": s.run_id, "score": score, "seconds": seconds})
    survivors = decide(entrants, b.eta)
    d = {
        "attribute": b.attribute,
        "epoch": epoch,
        "eta": b.eta,
        "rungs": b.rungs,
        "entrants": entrants,
        "survivors": survivors,
        "stopped": [e["lam"] for e in entrants if e["lam"] not in survivors],
    }
    key = exp.key(*b.decision_parts(epoch))
    if not exp.store.put_if_absent(key, json.dumps(d, indent=1, sort_keys=True).encode()):
        d = _read_decision(exp, b, epoch, alive)
    return d


def summary(exp, b: Bracket) -> dict:
    """What reduce records per attribute (and the report shows): each rung's scores and the λ
    stopped there; ``survivors`` once every rung is decided; ``stopped_seconds``: the train time of
    the stopped runs (they have no commit record to count it)."""
    p = progress(exp, b)
    stopped_s = 0.0
    for d in p.decisions:
        stopped_s += sum(e.get("seconds", 0.0) for e in d["entrants"] if e["lam"] in d["stopped"])
    return {
        "rungs": b.rungs,
        "eta": b.eta,
        "decisions": [{k: d[k] for k in ("epoch", "entrants", "survivors", "stopped")} for d in p.decisions],
        "survivors": [s.lam for s in p.alive] if p.decided else None,
        "stopped_seconds": stopped_s,
    }


# -- what status and the Kubernetes plan show -------------------------------------------------------
def _applies(cfg, specs: list[RunSpec]) -> list[RunSpec]:
    """The runs of ``specs`` that halving executes (none under ``lambda_search: grid``)."""
    if cfg.adversarial.lambda_search != "halving":
        return []
    return [s for s in specs if s.stage == "adversarial"]


def stopped_at(exp, cfg, specs: list[RunSpec]) -> dict[str, int]:
    """Run id -> the rung epoch at which halving stopped it, from the recorded decisions."""
    out: dict[str, int] = {}
    for b in brackets(cfg, _applies(cfg, specs)).values():
        for d in progress(exp, b).decisions:
            out.update({e["run_id"]: int(d["epoch"]) for e in d["entrants"] if e["lam"] in d["stopped"]})
    return out


@dataclass
class JobPlan:
    """The Kubernetes Jobs the halving search still creates: one per run (``executor.runs_per_job``
    > 1: per pack of runs, aal_k8s.planner.job_packs) and rung, then the final survivors' to the end.
    ``next``: the ones it creates first, as (pack, its members that still need the rung,
    until_epoch; 0 = to the end), ``total``: all of them, later rungs counted by the rule (how
    many go on is known, not which; packs of them: that many over ``runs_per_job``, rounded up)."""

    next: list[tuple[list[RunSpec], list[RunSpec], int]] = field(default_factory=list)
    total: int = 0


def job_plan(exp, cfg, specs: list[RunSpec]) -> JobPlan:
    from aal_k8s.planner import job_packs

    n, runs = cfg.executor.runs_per_job, _applies(cfg, specs)
    entrants: dict[int, list[RunSpec]] = {}  # rung epoch (0: to the end) -> the runs known to enter it
    counted: dict[int, int] = {}  # rung epoch -> how many more enter it, by the rule
    for b in brackets(cfg, runs).values():
        p = progress(exp, b)
        rest = b.rungs[len(p.decisions) :]
        entrants.setdefault(rest[0] if rest else 0, []).extend(p.alive)
        alive = len(p.alive)
        for epoch in [*rest[1:], 0] if rest else []:
            alive = keep_count(alive, b.eta)
            counted[epoch] = counted.get(epoch, 0) + alive
    out = JobPlan()
    for epoch, alive in entrants.items():
        # packs over every run entering the rung, as run_halving submits them: the same packs (and
        # Job names) whichever of them already got there
        for pack in job_packs(alive, n):
            todo = [s for s in pack if not (reached(exp, s.run_id, epoch) if epoch else exp.is_committed(s.run_id))]
            if todo:
                out.next.append((pack, todo, epoch))
    # the stage's runs share one pack key (same stage, dataset, seed and config) or none (a mode that trains alone)
    per_job = n if runs and n > 1 and _packable(runs[0]) else 1
    out.total = len(out.next) + sum(-(-c // per_job) for c in counted.values())
    return out


def _packable(spec: RunSpec) -> bool:
    from aal_k8s.packs import pack_key  # torch: only when packs are asked for

    return pack_key(spec) is not None

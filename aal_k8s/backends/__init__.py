"""Execution backends: one interface, a local-process and a Kubernetes implementation.

A backend receives RunSpecs whose specs are already in the store and gets each executed by
``aal-k8s worker``. Completion is always judged by the store (a committed run), never by the
backend, so re-submitting skips finished work whatever executed it.
"""

from __future__ import annotations

import abc
import sys
from dataclasses import dataclass, field

from aal_k8s.halving import brackets, progress, reached, rungs_for, stopped_at, take_decision
from aal_k8s.runspec import RunSpec

#: ``stopped``: halving stopped the run at a rung (``mark_stopped``); never a backend's answer
STATES = ("complete", "running", "pending", "failed", "not_submitted", "stopped")


@dataclass
class RunState:
    run_id: str
    state: str  # one of STATES
    reason: str = ""  # why pending/failed, when known


@dataclass
class SubmitReport:
    submitted: list[str] = field(default_factory=list)  # run ids handed to the backend now
    skipped: list[str] = field(default_factory=list)  # already committed
    failed: dict[str, str] = field(default_factory=dict)  # run id -> reason (local: finished runs)
    stopped: list[str] = field(default_factory=list)  # halving stopped them at a rung: nothing to wait for


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def submit(self, specs: list[RunSpec], experiment_store, until_epoch: int = 0) -> SubmitReport:
        """Hand every not-yet-committed run to the backend. The local backend runs them to the
        end before returning; the Kubernetes backend returns once the Jobs exist. ``until_epoch``:
        a halving rung (aal_k8s.halving): the workers stop after that epoch, and a run that
        reached it counts as done."""

    @abc.abstractmethod
    def wait(self, specs: list[RunSpec], experiment_store, until_epoch: int = 0) -> dict[str, RunState]:
        """Block until every run is complete (or, with ``until_epoch``, at that rung) or failed;
        return their final states."""

    @abc.abstractmethod
    def states(self, specs: list[RunSpec], experiment_store) -> dict[str, RunState]:
        """Current state of each run (store first: a committed run is complete)."""

    def preflight(self) -> None:
        """Refuse, before anything is written, a submission that cannot work (k8s: the placeholder
        image, a store no pod can see)."""

    def render(self, specs: list[RunSpec], experiment_store) -> str:
        """What ``submit --dry-run`` prints: one line per run (k8s: the Job manifests)."""
        lines = []
        for s in specs:
            done = " (complete)" if experiment_store.is_committed(s.run_id) else ""
            lines.append(s.describe() + done)
        return "".join(f"{ln}\n" for ln in lines)

    def cancel(self, specs: list[RunSpec], experiment_store) -> list[str]:
        """Stop queued/running runs; never touches committed results. Returns the cancelled ids."""
        return []

    def stored_logs(self, run_id: str, experiment_store, out=None) -> bool:
        """Write every attempt's log the worker copied to the store (``attempts/<a>/worker.log``),
        one after the other with a header each; False when there is none."""
        from aal_k8s.worker import ATTEMPT_LOG

        prefix = experiment_store.key("runs", run_id, "attempts")
        keys = [k for k in experiment_store.store.list(prefix) if k.endswith("/" + ATTEMPT_LOG)]
        out = out or sys.stdout
        for key in keys:
            out.write(f"== {experiment_store.store.url(key)}\n")
            out.write(experiment_store.store.get_bytes(key).decode(errors="replace"))
        return bool(keys)

    def logs(self, run_id: str, experiment_store, follow: bool = False, out=None) -> None:
        """Write the run's log to ``out`` (stdout): local, the worker output kept in the store;
        k8s, the log of the run's newest pod (``follow``: stream it)."""
        from aal_k8s.errors import AALError

        raise AALError(f"the {self.name} backend keeps no logs")


def get_backend(name: str, cfg) -> Backend:
    if name == "local":
        from aal_k8s.backends.local import LocalBackend

        return LocalBackend(cfg)
    if name == "k8s":
        try:
            from aal_k8s.backends.k8s import KubernetesBackend
        except ImportError as e:
            from aal_k8s.errors import AALError

            raise AALError(f"executor.backend=k8s is not available: {e}") from None
        return KubernetesBackend(cfg)
    from aal_k8s.errors import AALError

    raise AALError(f"executor.backend: unknown backend {name!r}")


def mark_stopped(exp, cfg, specs: list[RunSpec], states: dict[str, RunState]) -> dict[str, RunState]:
    """``states`` with every run halving stopped shown as ``stopped`` and its rung: the backend
    sees no Job and no commit for it, which would read as "not submitted"."""
    for run_id, epoch in stopped_at(exp, cfg, specs).items():
        if run_id in states and states[run_id].state != "complete":  # a grid run committed it since
            states[run_id] = RunState(run_id, "stopped", f"halving stopped it at rung epoch {epoch}")
    return states


def run_halving(backend, exp, cfg, specs: list[RunSpec], log=None):
    """Execute the adversarial stage by successive halving through ``backend``; the
    ``SubmitReport`` of every rung and of the final runs together. Stops at the first rung with a
    failed run (its bracket cannot be decided); a rerun continues from the store. Here, not in
    ``aal_k8s.halving``: the brackets and decisions are protocol, driving a backend is runtime."""
    log = log or sys.stderr
    report = SubmitReport()

    def merge(r) -> bool:
        report.submitted += [i for i in r.submitted if i not in report.submitted]
        report.skipped += [i for i in r.skipped if i not in report.skipped]
        report.failed.update(r.failed)
        return not r.failed

    prog = {a: progress(exp, b) for a, b in brackets(cfg, specs).items()}
    for i, epoch in enumerate(rungs_for(cfg)):
        open_ = [p for p in prog.values() if len(p.decisions) == i]
        if not open_:
            continue  # decided before (a rerun)
        entrants = [s for p in open_ for s in p.alive]
        todo = [s for s in entrants if not reached(exp, s.run_id, epoch)]
        print(f"stage adversarial: halving rung {i + 1} (epoch {epoch}): {len(entrants)} runs, "
              f"{len(todo)} to train", file=log)  # fmt: skip
        if todo:  # Kubernetes: one Job per run (or pack) and rung; the decision waits for all of them
            # every entrant, not only those still to train: a backend skips the ones at the rung, and
            # packs made over all of them keep their names (and find their Jobs) after a crash
            merge(backend.submit(entrants, exp, until_epoch=epoch))
            if not report.failed:
                for run_id, st in backend.wait(entrants, exp, until_epoch=epoch).items():
                    if st.state == "failed":
                        report.failed[run_id] = st.reason or "failed"
            if report.failed:
                return report
        for p in open_:
            d = take_decision(exp, p.bracket, epoch, p.alive)
            if d is None:
                missing = [s.run_id for s in p.alive if not reached(exp, s.run_id, epoch)]
                report.failed.update({m: f"did not reach halving rung epoch {epoch}" for m in missing})
                return report
            p.decisions.append(d)
            p.alive = [s for s in p.alive if s.lam in d["survivors"]]
            stopped = ", ".join(f"{lam:g}" for lam in d["stopped"]) or "none"
            print(f"stage adversarial: {p.bracket.attribute}: rung epoch {epoch} stopped lambda {stopped}", file=log)
    merge(backend.submit([s for p in prog.values() for s in p.alive], exp))
    alive = {s.run_id for p in prog.values() for s in p.alive}
    report.stopped = [s.run_id for s in specs if s.run_id not in alive]  # never commit: no one waits for them
    return report

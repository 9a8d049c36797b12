"""One live view of an experiment's progress, for ``pipeline``, ``submit`` and ``watch``.

Per stage: runs complete / running / pending / failed / not submitted, run-seconds so far (the
committed runs' total seconds), and an ETA from measured run times; below, the slowest committed
runs and the failed runs with their last log line. On a terminal it is one table redrawn in place
(rich); elsewhere (CI logs, pipes, files) a plain line per stage whenever its counts change.

ETA of a stage = runs left (running + pending + not submitted) x the mean wall seconds of its
committed runs' workers (``timings.worker``: imports, data and training; of all committed runs while
it has none) / the runs executing at once (those running now, else ``slots``: the local backend's
parallel processes). The pipeline's ETA adds the stages up:
they run one after the other. Stages that need reduce first show ``waits for reduce``.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

from aal_k8s.backends import STATES, mark_stopped

TOP = 3  # slowest and failed runs listed


@dataclass
class StageProgress:
    stage: str
    counts: dict[str, int] = field(default_factory=dict)  # STATES -> runs
    run_seconds: float = 0.0  # committed runs' total seconds
    eta_seconds: float | None = None  # None: nothing measured yet, or nothing left
    waiting: str = ""  # why the stage cannot be planned yet ("waits for reduce")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def left(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("running", "pending", "not_submitted"))


@dataclass
class Progress:
    stages: list[StageProgress]
    slowest: list[tuple[str, float]] = field(default_factory=list)  # (run id, wall seconds), slowest first
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, reason or last log line), by id

    @property
    def in_flight(self) -> int:
        """Runs running or pending: 0 when nothing is happening (``watch`` stops there)."""
        return sum(s.counts.get("running", 0) + s.counts.get("pending", 0) for s in self.stages)

    @property
    def eta_seconds(self) -> float | None:
        etas = [s.eta_seconds for s in self.stages if s.left]
        return None if not etas or any(e is None for e in etas) else sum(etas)


class Tracker:
    """Polls the backend and the store for ``stages`` of one experiment."""

    def __init__(self, cfg, exp, backend, stages: list[str], slots: int = 1, started_only: bool = False):
        self.cfg, self.exp, self.backend, self.stages, self.slots = cfg, exp, backend, list(stages), max(1, slots)
        self.started_only = started_only  # leave out stages with no run submitted yet (watch)
        self._seconds: dict[str, tuple[float, float]] = {}  # committed run id -> (total, worker wall) seconds

    def poll(self) -> Progress:
        from aal_k8s.cli.stages import plan
        from aal_k8s.errors import StageOrderError

        rows: list[tuple[StageProgress, list[float]]] = []  # with the wall seconds of its committed runs
        measured: list[tuple[str, float]] = []
        failed: list[tuple[str, str]] = []
        for stage in self.stages:
            try:
                specs = plan(self.cfg, self.exp, stage)
            except StageOrderError:
                if not self.started_only:
                    rows.append((StageProgress(stage, waiting="waits for reduce"), []))
                continue
            row = StageProgress(stage, counts={s: 0 for s in STATES})
            secs = []
            for run_id, st in mark_stopped(self.exp, self.cfg, specs, self.backend.states(specs, self.exp)).items():
                row.counts[st.state] += 1
                if st.state == "complete":
                    total, wall = self._run_seconds(run_id)
                    row.run_seconds += total
                    secs.append(wall)
                    measured.append((run_id, wall))
                elif st.state == "failed":
                    failed.append((run_id, st.reason or self._last_log_line(run_id)))
            if self.started_only and row.counts["not_submitted"] == row.total:
                continue
            rows.append((row, secs))
        overall = [s for _, s in measured]
        for row, secs in rows:
            mean = sum(secs or overall) / len(secs or overall) if (secs or overall) else None
            if row.left and mean is not None:
                row.eta_seconds = row.left * mean / (row.counts["running"] or self.slots)
        slowest = sorted(measured, key=lambda kv: (-kv[1], kv[0]))[:TOP]
        return Progress([row for row, _ in rows], slowest, sorted(failed))

    def _run_seconds(self, run_id: str) -> tuple[float, float]:
        """(total, wall): the report's run-seconds and the worker's wall time (runs committed
        before it was recorded: the total)."""
        if run_id not in self._seconds:
            timings = (self.exp.read_metrics(run_id) or {}).get("timings") or {}
            total = float(timings.get("total", 0.0))
            self._seconds[run_id] = (total, float(timings.get("worker", total)))
        return self._seconds[run_id]

    def _last_log_line(self, run_id: str) -> str:
        from aal_k8s.backends.local import LOG_NAME

        key = self.exp.run_key(run_id, LOG_NAME)
        if not self.exp.store.exists(key):
            return "no reason recorded"
        lines = [ln for ln in self.exp.store.get_bytes(key).decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else "empty log"


def duration(seconds: float | None) -> str:
    """``None`` -> "?", else h:mm:ss / m:ss / s."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else (f"{m}:{s:02d}" if m else f"{s}s")


def stage_line(row: StageProgress) -> str:
    """One stage as a plain line (non-terminal output)."""
    if row.waiting:
        return f"{row.stage}: {row.waiting}"
    c = row.counts
    eta = f"; ETA {duration(row.eta_seconds)}" if row.left else ""
    stopped = f", {c['stopped']} stopped by halving" if c.get("stopped") else ""
    return (
        f"{row.stage}: {c['complete']}/{row.total} complete, {c['running']} running, {c['pending']} pending, "
        f"{c['failed']} failed, {c['not_submitted']} not submitted{stopped}; {row.run_seconds:.0f} run-s{eta}"
    )


def render(progress: Progress, title: str):
    """The rich renderable of the terminal view."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    left = any(row.left for row in progress.stages)
    eta = f"ETA {duration(progress.eta_seconds)}" if left else "nothing left to run"
    table = Table(title=f"{title} ({eta})", title_justify="left", expand=False)
    table.add_column("stage")
    for name, style in (("done", "green"), ("running", "cyan"), ("pending", "yellow"), ("failed", "red")):
        table.add_column(name, justify="right", style=style)
    table.add_column("not submitted", justify="right", style="dim")
    stopped = any(row.counts.get("stopped") for row in progress.stages)  # by halving, at a rung
    if stopped:
        table.add_column("stopped", justify="right", style="dim")
    table.add_column("run-s", justify="right")
    table.add_column("ETA", justify="right")
    for row in progress.stages:
        if row.waiting:
            table.add_row(row.stage, *[""] * (6 if stopped else 5), "", row.waiting, style="dim")
            continue
        c = row.counts
        table.add_row(
            row.stage, f"{c['complete']}/{row.total}", str(c["running"]), str(c["pending"]), str(c["failed"]),
            str(c["not_submitted"]), *([str(c["stopped"])] if stopped else []), f"{row.run_seconds:.0f}", duration(row.eta_seconds) if row.left else "",
        )  # fmt: skip
    parts = [table]
    if progress.slowest:
        parts.append(Text("slowest: " + ", ".join(f"{r} ({duration(s)})" for r, s in progress.slowest), style="dim"))
    for run_id, why in progress.failed[:TOP]:
        parts.append(Text(f"failed {run_id}: {why}", style="red"))
    if len(progress.failed) > TOP:
        parts.append(Text(f"... and {len(progress.failed) - TOP} more failed runs (aal-k8s status)", style="red"))
    return Group(*parts)


class LiveView:
    """Shows ``tracker``'s progress while the body of a ``with`` runs (a polling thread), and once
    more at the end. ``live``: redraw in place with rich (default: when ``stream`` is a terminal)."""

    def __init__(self, tracker: Tracker, title: str, stream=None, interval: float = 2.0, live: bool | None = None):
        self.tracker, self.title, self.interval = tracker, title, interval
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._stop = threading.Event()
        self._shown: dict[str, str] = {}  # stage -> its last plain line; failed run id -> its reason
        self._shown_at: dict[str, float] = {}  # stage -> when its last plain line was printed
        self.plain_every = 30.0  # seconds between a stage's plain lines while it is under way
        self._thread: threading.Thread | None = None
        self._rich = None
        self.last: Progress | None = None

    def __enter__(self) -> "LiveView":
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._rich = Live(console=Console(file=self.stream), refresh_per_second=4, transient=False)
            self._rich.__enter__()
        self.update()
        self._thread = threading.Thread(target=self._loop, name="aal-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.plain_every = 0.0  # the last state is always shown
        self.update()
        if self._rich is not None:
            self._rich.__exit__(*exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.update()

    def update(self) -> Progress | None:
        try:
            progress = self.tracker.poll()
        except Exception as e:  # a store or API hiccup must not stop the work being watched
            self._print(f"progress: could not poll ({type(e).__name__}: {e})")
            return None
        self.last = progress
        if self._rich is not None:
            self._rich.update(render(progress, self.title))
            return progress
        now = time.monotonic()
        for row in progress.stages:
            line = stage_line(row)
            first = row.stage not in self._shown
            due = first or row.left == 0 or now - self._shown_at[row.stage] >= self.plain_every
            if self._shown.get(row.stage) != line and due:  # a CI log gets a line per change, not per run
                self._shown[row.stage], self._shown_at[row.stage] = line, now
                self._print(f"{time.strftime('%H:%M:%S')} {line}")
        for run_id, why in progress.failed:
            if run_id not in self._shown:
                self._shown[run_id] = why
                self._print(f"{time.strftime('%H:%M:%S')} failed {run_id}: {why}")
        return progress

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def live_view(cfg, exp, backend, stages: list[str], stream=None, live: bool | None = None, started_only: bool = False) -> LiveView:
    """The view for ``backend``: polled every 2 s locally, every 15 s on Kubernetes (each poll lists
    Jobs and checks every unfinished run's commit in the store). A local backend's own progress bar
    is switched off: the view replaces it."""
    if hasattr(backend, "progress"):
        backend.progress = False
    slots = backend.slots() if hasattr(backend, "slots") else 1
    interval = 2.0 if backend.name == "local" else 15.0
    tracker = Tracker(cfg, exp, backend, stages, slots, started_only)
    return LiveView(tracker, f"experiment {exp.experiment} ({backend.name})", stream, interval, live)

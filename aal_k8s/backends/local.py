"""Run a stage's runs as parallel ``aal-k8s worker`` processes on this machine.

Parallelism defaults to the number of CPU cores (one run per GPU when CUDA is present), and each
run gets ``cores / parallel`` torch threads so runs do not oversubscribe the CPU. With
``executor.runs_per_job`` N > 1, runs that can share a pack (aal_k8s.packs) go N to a worker process. Each worker's
output is kept in the store beside the run (``runs/<id>/local.log``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

from aal_k8s.backends import Backend, RunState, SubmitReport
from aal_k8s.errors import StoreError
from aal_k8s.runspec import RunSpec

LOG_NAME = "local.log"
#: Seconds a stopped worker gets to copy its log to the store before it is killed.
STOP_GRACE_SECONDS = 10.0


def default_parallel(device: str) -> int:
    if device in ("auto", "cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.device_count()
        except Exception:
            pass
    return os.cpu_count() or 1


class LocalBackend(Backend):
    name = "local"

    def __init__(self, cfg, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = False  # set on Ctrl-C / SIGTERM: no further worker starts
        # run ids of the submit in progress, for states() (the live view polls it from another thread)
        self._queued: set[str] = set()
        self._running: set[str] = set()

    def slots(self) -> int:
        """How many runs execute at once (before capping by a stage's run count)."""
        return self.cfg.executor.parallel or default_parallel(self.cfg.train.device)

    def _parallel(self, n_runs: int) -> tuple[int, int]:
        par = max(1, min(self.slots(), n_runs))
        threads = self.cfg.train.threads or max(1, (os.cpu_count() or 1) // par)
        return par, threads

    def worker_command(self, pack: list[RunSpec], exp, until_epoch: int = 0) -> list[str]:
        """``aal-k8s worker`` for one run, or for a pack of runs trained together (aal_k8s.packs)."""
        return [
            sys.executable, "-m", "aal_k8s", "worker",
            "--store", exp.store.uri, "--experiment", exp.experiment, *[x for s in pack for x in ("--run", s.run_id)],
            *(["--until-epoch", str(until_epoch)] if until_epoch else []),
        ]  # fmt: skip

    def _run_one(self, pack: list[RunSpec], exp, threads: int, until_epoch: int = 0) -> list[tuple[str, int, str]]:
        """Run one worker process for ``pack`` (usually one run); (run id, exit code, last log line)
        per member. A pack's members share its process, its exit code and its log."""
        from aal_k8s.store import store_options_env

        ids = [s.run_id for s in pack]
        env = dict(os.environ, AAL_K8S_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        env.update(store_options_env(self.cfg.store))  # endpoint, retries, checkpoint_keep (no secrets)
        with self._lock:  # checked and registered under the lock: a stop never misses a new worker
            if self._stopping:
                return [(r, -1, "not started: the stage was stopped") for r in ids]
            # its own session: Ctrl-C reaches only this process, which stops the workers in order
            proc = subprocess.Popen(
                self.worker_command(pack, exp, until_epoch), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
            self._procs.add(proc)
            self._queued.difference_update(ids)
            self._running.update(ids)
        try:
            output, _ = proc.communicate()
        finally:
            with self._lock:
                self._procs.discard(proc)
                self._running.difference_update(ids)
        text = output.decode(errors="replace")
        for r in ids:
            exp.store.put_bytes(exp.run_key(r, LOG_NAME), output)
        last = next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), "")
        return [(r, proc.returncode, last) for r in ids]

    def submit(self, specs: list[RunSpec], exp, until_epoch: int = 0) -> SubmitReport:
        """``until_epoch``: a halving rung (aal_k8s.halving); a run that reached it is skipped."""
        from aal_k8s.halving import reached

        report = SubmitReport()
        todo = []
        for spec in specs:
            if reached(exp, spec.run_id, until_epoch) if until_epoch else exp.is_committed(spec.run_id):
                report.skipped.append(spec.run_id)
            else:
                exp.write_spec(spec)
                todo.append(spec)
        if not todo:
            return report
        from aal_k8s.packs import group_packs

        packs = group_packs(todo, self.cfg.executor.runs_per_job)
        par, threads = self._parallel(len(packs))
        with self._lock:
            self._queued.update(s.run_id for s in todo)
        bar = _progress(len(todo), self.progress)
        pool = ThreadPoolExecutor(max_workers=par)
        try:
            futures = [pool.submit(self._run_one, p, exp, threads, until_epoch) for p in packs]
            for fut in as_completed(futures):
                for run_id, code, last in fut.result():
                    report.submitted.append(run_id)
                    if code != 0:
                        report.failed[run_id] = f"exit {code}: {last}"
                    bar.update(1)
                bar.set_postfix(failed=len(report.failed))
        except BaseException:  # Ctrl-C, SIGTERM (aal_k8s.cli), or a bug: stop the stage now
            pool.shutdown(wait=False, cancel_futures=True)  # queued runs never start
            self._stop_all()
            raise
        finally:
            pool.shutdown(wait=True)  # each thread returns once its worker has exited
            bar.close()
            with self._lock:
                self._queued.clear()
        report.submitted.sort()
        return report

    def _stop_all(self) -> None:
        """SIGTERM every running worker (it copies its log to the store and exits; nothing is
        committed: a commit is one create-only write, after everything else), SIGKILL after
        STOP_GRACE_SECONDS. No worker starts afterwards."""
        with self._lock:
            self._stopping = True
            procs = list(self._procs)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                p.kill()

    def logs(self, run_id: str, exp, follow: bool = False, out=None) -> None:
        key = exp.run_key(run_id, LOG_NAME)
        if not exp.store.exists(key):
            raise StoreError(f"run {run_id}: no log at {exp.store.url(key)} (not run by the local backend yet)")
        (out or sys.stdout).write(exp.store.get_bytes(key).decode(errors="replace"))

    def wait(self, specs: list[RunSpec], exp, until_epoch: int = 0) -> dict[str, RunState]:
        if until_epoch:  # a halving rung: submit ran it; a run that did not get there failed
            from aal_k8s.halving import reached

            return {
                s.run_id: RunState(s.run_id, "complete") if reached(exp, s.run_id, until_epoch)
                else RunState(s.run_id, "failed", (exp.read_failure(s.run_id) or {}).get("message", ""))
                for s in specs
            }  # fmt: skip
        return self.states(specs, exp)  # submit already ran everything to the end

    def states(self, specs: list[RunSpec], exp) -> dict[str, RunState]:
        out = {}
        with self._lock:
            running, queued = set(self._running), set(self._queued)
        for spec in specs:
            if exp.is_committed(spec.run_id):
                out[spec.run_id] = RunState(spec.run_id, "complete")
            elif spec.run_id in running:
                out[spec.run_id] = RunState(spec.run_id, "running")
            elif spec.run_id in queued:
                out[spec.run_id] = RunState(spec.run_id, "pending", "waiting for a free local worker slot")
            else:
                failure = exp.read_failure(spec.run_id)
                if failure:
                    out[spec.run_id] = RunState(spec.run_id, "failed", failure["message"])
                else:
                    out[spec.run_id] = RunState(spec.run_id, "not_submitted")
        return out


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True, leave=True)

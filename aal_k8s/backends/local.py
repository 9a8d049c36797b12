"""Run a stage's runs as parallel ``aal-k8s worker`` processes on this machine.

Parallelism defaults to the number of CPU cores (one run per GPU when CUDA is present), and each
run gets ``cores / parallel`` torch threads so runs do not oversubscribe the CPU. Each worker's
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

    def _run_one(self, spec: RunSpec, exp, threads: int) -> tuple[str, int, str]:
        from aal_k8s.store import store_options_env

        env = dict(os.environ, AAL_K8S_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        env.update(store_options_env(self.cfg.store))  # endpoint, retries, checkpoint_keep (no secrets)
        cmd = [
            sys.executable, "-m", "aal_k8s", "worker",
            "--store", exp.store.uri, "--experiment", exp.experiment, "--run", spec.run_id,
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        with self._lock:
            self._procs.add(proc)
            self._queued.discard(spec.run_id)
            self._running.add(spec.run_id)
        try:
            output, _ = proc.communicate()
        finally:
            with self._lock:
                self._procs.discard(proc)
                self._running.discard(spec.run_id)
        text = output.decode(errors="replace")
        exp.store.put_bytes(exp.run_key(spec.run_id, LOG_NAME), output)
        last = next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), "")
        return spec.run_id, proc.returncode, last

    def submit(self, specs: list[RunSpec], exp) -> SubmitReport:
        report = SubmitReport()
        todo = []
        for spec in specs:
            if exp.is_committed(spec.run_id):
                report.skipped.append(spec.run_id)
            else:
                exp.write_spec(spec)
                todo.append(spec)
        if not todo:
            return report
        par, threads = self._parallel(len(todo))
        with self._lock:
            self._queued.update(s.run_id for s in todo)
        bar = _progress(len(todo), self.progress)
        try:
            with ThreadPoolExecutor(max_workers=par) as pool:
                futures = [pool.submit(self._run_one, s, exp, threads) for s in todo]
                for fut in as_completed(futures):
                    run_id, code, last = fut.result()
                    report.submitted.append(run_id)
                    if code != 0:
                        report.failed[run_id] = f"exit {code}: {last}"
                    bar.update(1)
                    bar.set_postfix(failed=len(report.failed))
        except BaseException:
            self._kill_all()
            raise
        finally:
            bar.close()
            with self._lock:
                self._queued.clear()
        report.submitted.sort()
        return report

    def _kill_all(self) -> None:
        with self._lock:
            for p in self._procs:
                p.kill()

    def logs(self, run_id: str, exp, follow: bool = False, out=None) -> None:
        key = exp.run_key(run_id, LOG_NAME)
        if not exp.store.exists(key):
            raise StoreError(f"run {run_id}: no log at {exp.store.url(key)} (not run by the local backend yet)")
        (out or sys.stdout).write(exp.store.get_bytes(key).decode(errors="replace"))

    def wait(self, specs: list[RunSpec], exp) -> dict[str, RunState]:
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

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

    def _parallel(self, n_runs: int) -> tuple[int, int]:
        par = self.cfg.executor.parallel or default_parallel(self.cfg.train.device)
        par = max(1, min(par, n_runs))
        threads = self.cfg.train.threads or max(1, (os.cpu_count() or 1) // par)
        return par, threads

    def worker_command(self, spec: RunSpec, exp) -> list[str]:
        return [
            sys.executable, "-m", "aal_k8s", "worker",
            "--store", exp.store.uri, "--experiment", exp.experiment, "--run", spec.run_id,
        ]  # fmt: skip

    def _run_one(self, spec: RunSpec, exp, threads: int) -> tuple[str, int, str]:
        from aal_k8s.store import store_options_env

        env = dict(os.environ, AAL_K8S_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        env.update(store_options_env(self.cfg.store))  # endpoint, retries, checkpoint_keep (no secrets)
        with self._lock:  # checked and registered under the lock: a stop never misses a new worker
            if self._stopping:
                return spec.run_id, -1, "not started: the stage was stopped"
            # its own session: Ctrl-C reaches only this process, which stops the workers in order
            proc = subprocess.Popen(
                self.worker_command(spec, exp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
            self._procs.add(proc)
        try:
            output, _ = proc.communicate()
        finally:
            with self._lock:
                self._procs.discard(proc)
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
        bar = _progress(len(todo), self.progress)
        pool = ThreadPoolExecutor(max_workers=par)
        try:
            futures = [pool.submit(self._run_one, s, exp, threads) for s in todo]
            for fut in as_completed(futures):
                run_id, code, last = fut.result()
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

    def wait(self, specs: list[RunSpec], exp) -> dict[str, RunState]:
        return self.states(specs, exp)  # submit already ran everything to the end

    def states(self, specs: list[RunSpec], exp) -> dict[str, RunState]:
        out = {}
        for spec in specs:
            if exp.is_committed(spec.run_id):
                out[spec.run_id] = RunState(spec.run_id, "complete")
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

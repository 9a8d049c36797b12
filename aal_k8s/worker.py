"""Execute one run: read its spec from the store, train, commit. The same entry point runs in a
local process and in a Kubernetes pod::

    aal-k8s worker --store s3://bucket/aal --experiment celeba --run pair-a03-a07-1a2b3c4d

Exit codes: 0 committed (or already committed), 2 bad input (config, dataset, attribute: the
cluster must not retry it), 1 anything else (worth a retry, e.g. the store was unreachable).

Crash safety: the worker checkpoints every epoch into the store under its own attempt id and, when
started again, resumes from the newest complete checkpoint of the run (any attempt's). When two
workers run the same run at once, both train, exactly one commits (see
``aal_k8s.store.layout``), and the other notices and exits 0. Store options (endpoint, retries,
``checkpoint_keep``...) come from ``AAL_K8S_STORE_OPTIONS``; credentials from the usual AWS_*
variables, a mounted Secret or the pod's role, and are never printed.
"""

from __future__ import annotations

import os
import sys
import traceback

from aal_k8s.errors import EXIT_USAGE, AALError, scrub

EXIT_CRASH = 1
#: Each attempt's own output, copied to the store when it ends (committed, failed, crashed or
#: stopped), so `aal-k8s logs` works after Kubernetes has deleted the Job and its pods.
from aal_k8s.store.layout import ATTEMPT_LOG  # noqa: E402 - one name for the attempt log


class _Tee:
    """Writes to ``stream`` and keeps a copy."""

    def __init__(self, stream):
        self.stream, self.parts = stream, []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def text(self) -> str:
        return "".join(self.parts)

    def __getattr__(self, name):  # isatty, encoding... as the stream has them
        return getattr(self.stream, name)


def _threads(cfg_threads: int) -> int:
    if cfg_threads > 0:
        return cfg_threads
    env = os.environ.get("AAL_K8S_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return int(env) if env and env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


def execute(store_uri: str, experiment: str, run_id: str, log=None, until_epoch: int = 0) -> int:
    """Run ``run_id`` to its commit; returns the process exit code. ``until_epoch`` (a halving
    rung, aal_k8s.halving): stop after that epoch's checkpoint and record the rung instead."""
    raw = log if log is not None else sys.stderr  # resolved per call: a captured stream may be gone
    log = _Scrubbed(raw)  # pod logs, local.log and worker.log are read by people who must not see credentials
    from aal_k8s.store.layout import check_name

    try:
        check_name("run id", run_id)  # before anything is opened or written
        exp, options = open_experiment(store_uri, experiment)
    except AALError as e:
        print(f"run {run_id}: failed: {e.message}", file=log)
        return e.exit_code
    tee = _Tee(raw)
    try:
        return _execute(exp, run_id, _Scrubbed(tee), options, until_epoch)  # scrubbed before the tee keeps a copy
    finally:  # also on KeyboardInterrupt / SystemExit (SIGTERM: preemption, eviction, cancel)
        try:
            exp.store.put_bytes(exp.attempt_key(run_id, ATTEMPT_LOG), tee.text().encode())
        except Exception as e:  # the store itself may be what failed
            print(f"run {run_id}: could not copy the log to the store: {e}", file=log)


def open_experiment(store_uri: str, experiment: str):
    """``(experiment store, store options)`` as a worker opens them: the options come from the
    environment the backend set (AAL_K8S_STORE_OPTIONS), never from a config file."""
    from aal_k8s.store import ExperimentStore, open_store, store_options_from_env

    options = store_options_from_env(store_uri)
    return ExperimentStore(open_store(store_uri, options), experiment), options


def _execute(exp, run_id: str, log, options, until_epoch: int = 0) -> int:
    try:
        if nothing_to_do(exp, run_id, log, until_epoch):
            return 0
        return _train_and_commit(exp, read_spec(exp, run_id), log, options.checkpoint_keep, until_epoch)
    except _CommittedElsewhere as e:
        print(f"run {run_id}: committed meanwhile by attempt {e.attempt}; stopping this attempt", file=log)
        return 0
    except AALError as e:
        code = e.exit_code if e.exit_code in (EXIT_USAGE, EXIT_CRASH) else EXIT_USAGE
        record_failure(exp, run_id, e.message, code, log)
        return code
    except Exception as e:
        tb = traceback.format_exc()
        print(tb, file=log)
        record_failure(exp, run_id, f"{type(e).__name__}: {e}", EXIT_CRASH, log)
        return EXIT_CRASH


def nothing_to_do(exp, run_id: str, log, until_epoch: int = 0) -> bool:
    """True when ``run_id`` is committed (its leftovers cleaned) or already at the rung
    ``until_epoch``; a commit record that fails verification is moved aside (the run trains again)."""
    aside = exp.quarantine_record(run_id)
    if aside is not None:  # truncated or altered: retrain rather than trust or fail forever
        print(f"run {run_id}: its commit record failed verification; moved to "
              f"{exp.store.url(aside)}, training the run again", file=log)  # fmt: skip
    elif exp.is_committed(run_id):
        # a crash between the commit and its cleanup left files behind: finish the cleanup
        gone = exp.clean_committed(run_id)
        cleaned = f"; removed {len(gone)} leftover files ({sum(gone.values())} bytes)" if gone else ""
        print(f"run {run_id}: already committed, nothing to do{cleaned}", file=log)
        return True
    if until_epoch:
        from aal_k8s.halving import reached

        if reached(exp, run_id, until_epoch):
            print(f"run {run_id}: already at rung epoch {until_epoch}, nothing to do", file=log)
            return True
    return False


def read_spec(exp, run_id: str):
    spec = exp.read_spec(run_id)
    if spec.run_id != run_id:
        raise AALError(f"run {run_id}: stored spec hashes to {spec.run_id}; the spec was altered")
    return spec


class _Scrubbed:
    """A text stream that removes credentials (``aal_k8s.errors.scrub``) from what is written."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(scrub(text))

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, encoding... as the stream has them
        return getattr(self.stream, name)


def record_failure(exp, run_id: str, message: str, code: int, log) -> None:
    message = scrub(message)
    print(f"run {run_id}: failed: {message}", file=log)
    try:
        exp.record_failure(run_id, message, code)
    except Exception as e:  # the store itself may be what failed
        print(f"run {run_id}: could not record the failure: {e}", file=log)


class _RungReached(Exception):
    """The halving rung's checkpoint and record are written: this attempt is done."""


class _CommittedElsewhere(Exception):
    def __init__(self, attempt: str):
        super().__init__(attempt)
        self.attempt = attempt


def load_checkpoint(exp, spec, log):
    """The newest complete checkpoint's training state, or None (start from scratch)."""
    import io

    import torch

    found = exp.latest_checkpoint(spec.run_id, log=log)
    if found is None:
        return None
    epoch, blob, url = found
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("run_id") != spec.run_id:
            raise ValueError("it belongs to another run")
    except Exception as e:
        print(f"run {spec.run_id}: cannot use checkpoint {url} ({type(e).__name__}: {e}); starting over", file=log)
        return None
    print(f"run {spec.run_id}: resuming after epoch {epoch} from {url}", file=log)
    return state


def process_seconds() -> float | None:
    """Seconds since this process started, from the kernel's record (Linux ``/proc``): what a
    Job's pod spends on a run once its container runs, interpreter start-up and imports included,
    which ``started`` below cannot see. None where there is no ``/proc``."""
    import time

    try:
        with open("/proc/self/stat") as f:
            # field 22 (starttime, clock ticks after boot); the command name (field 2) may hold spaces
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        # the boot clock is what starttime counts from (/proc/stat's btime is whole seconds)
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return max(0.0, now - start_ticks / os.sysconf("SC_CLK_TCK"))


def _train_and_commit(exp, spec, log, checkpoint_keep: int = 2, until_epoch: int = 0) -> int:
    import io
    import time

    started = time.perf_counter()  # wall time of the whole attempt (imports, data, training): the live view's ETA

    import torch

    from aal_k8s.config import config_from_dict
    from aal_k8s.data import load_dataset
    from aal_k8s.train import train_run

    cfg = config_from_dict(spec.config)
    torch.set_num_threads(_threads(cfg.train.threads))
    print(f"run {spec.describe()}", file=log)
    data = load_dataset(cfg.dataset, store=exp.store)  # a prepared pack in the store is used
    missing = [a for a in spec.heads if a not in data.attributes]
    if missing:
        raise AALError(f"run {spec.run_id}: dataset {spec.dataset!r} has no attribute(s) {missing}")

    from aal_k8s.events import open_events

    events = open_events(exp, spec, log)

    def progress(epoch: int, entry: dict) -> None:
        acc = " ".join(f"{k}={v:.4f}" for k, v in entry["val_acc"].items())
        print(f"run {spec.run_id}: epoch {epoch} lr={entry['lr']:g} val {acc} ({entry['seconds']:.1f}s)", file=log)
        events.epoch(entry)

    def checkpoint(state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        exp.write_checkpoint(spec.run_id, state["epoch"], buf.getvalue(), keep=checkpoint_keep)
        record = exp.read_metrics(spec.run_id)
        if record is not None:  # a duplicate attempt finished first: no point going on
            exp.discard_attempt(spec.run_id)  # this attempt's files; the winner's stay
            raise _CommittedElsewhere(record.get("attempt", "?"))
        if until_epoch and state["epoch"] >= until_epoch:  # after the checkpoint: the next rung resumes from it
            progress(state["epoch"], state["history"][-1])
            rung(state)
            raise _RungReached()

    def rung(state: dict) -> None:
        from aal_k8s.halving import write_rung

        write_rung(exp, spec.run_id, until_epoch, state["history"], float(state["timings"].get("total", 0.0)))
        print(f"run {spec.run_id}: reached halving rung epoch {until_epoch}; stopping here", file=log)

    init_state = None
    if spec.init_from:  # the shared ablation starts from the multi-task run's CNN
        if not exp.is_committed(spec.init_from):
            raise AALError(f"run {spec.run_id}: starts from run {spec.init_from}, which is not committed (run its stage first)")
        from safetensors.torch import load as load_safetensors

        init_state = load_safetensors(exp.read_artifact(spec.init_from, "best.safetensors"))
    resume = load_checkpoint(exp, spec, log)
    if until_epoch >= cfg.train.epochs:
        until_epoch = 0  # the last rung is the full run: train to the end and commit
    try:
        if until_epoch and resume is not None and int(resume["epoch"]) >= until_epoch:
            rung(resume)  # a crash between the rung's checkpoint and its record
            return 0
        if resume is not None:
            for entry in resume["history"]:  # this attempt's event file gets the whole curves
                events.epoch(entry)
        result = train_run(
            spec, data, on_epoch_end=progress, resume_state=resume, on_checkpoint=checkpoint, init_state=init_state
        )
        events.result(result.best_epoch, result.val_acc, result.test_acc)
    except _RungReached:
        return 0
    finally:
        events.close()
    return commit_result(exp, spec, result, started, log)


def commit_result(exp, spec, result, started: float, log, members: int = 1) -> int:
    """Commit ``result`` as run ``spec`` (its weights, per-image predictions, metrics); the worker's
    exit code. ``started``: perf_counter at the start of the attempt (``timings.worker``).
    ``members``: the runs the process trained together (a pack, aal_k8s.packs): its worker and
    process seconds are split evenly over them, as its training and evaluation seconds are, so
    that a record says what its run cost and every reader (the plan's calibration, the live
    view's ETA) reads it as it reads a run trained alone."""
    import time

    from safetensors.torch import save as save_safetensors

    from aal_k8s import predictions

    weights = save_safetensors(result.state_dict, metadata={"run_id": spec.run_id})
    preds = predictions.pack({split: c.numpy() for split, c in result.correct.items()}, result.heads)
    metrics = result.metrics()
    metrics["timings"] = {**metrics["timings"], "worker": (time.perf_counter() - started) / members}
    age = process_seconds()
    if age is not None:
        metrics["timings"]["process"] = age / members
    record = exp.commit_run(spec, {"best.safetensors": weights, predictions.ARTIFACT: preds}, metrics)
    if record.get("attempt") != exp.attempt:
        print(f"run {spec.run_id}: attempt {record.get('attempt')} committed it first; "
              f"this attempt ({exp.attempt}) discarded its files", file=log)  # fmt: skip
        return 0
    print(f"run {spec.run_id}: committed by attempt {exp.attempt} (best epoch {result.best_epoch})", file=log)
    return 0

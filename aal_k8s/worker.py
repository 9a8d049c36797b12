"""Execute one run: read its spec from the store, train, commit. The same entry point runs in a
local process and in a Kubernetes pod::

    aal-k8s worker --store s3://bucket/aal --experiment celeba --run pair-a03-a07-1a2b3c4d

Exit codes: 0 committed (or already committed), 2 bad input (config, dataset, attribute: the
cluster must not retry it), 1 anything else (worth a retry).
"""

from __future__ import annotations

import os
import sys
import traceback

from aal_k8s.errors import EXIT_USAGE, AALError

EXIT_CRASH = 1


def _threads(cfg_threads: int) -> int:
    if cfg_threads > 0:
        return cfg_threads
    env = os.environ.get("AAL_K8S_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return int(env) if env and env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


def execute(store_uri: str, experiment: str, run_id: str, log=sys.stderr) -> int:
    """Run ``run_id`` to its commit; returns the process exit code."""
    from aal_k8s.store import ExperimentStore, open_store

    exp = ExperimentStore(open_store(store_uri), experiment)
    try:
        if exp.is_committed(run_id):
            print(f"run {run_id}: already committed, nothing to do", file=log)
            return 0
        spec = exp.read_spec(run_id)
        if spec.run_id != run_id:
            raise AALError(f"run {run_id}: stored spec hashes to {spec.run_id}; the spec was altered")
        return _train_and_commit(exp, spec, log)
    except AALError as e:
        _record(exp, run_id, e.message, EXIT_USAGE, log)
        return EXIT_USAGE
    except Exception as e:
        tb = traceback.format_exc()
        print(tb, file=log)
        _record(exp, run_id, f"{type(e).__name__}: {e}", EXIT_CRASH, log)
        return EXIT_CRASH


def _record(exp, run_id: str, message: str, code: int, log) -> None:
    print(f"run {run_id}: failed: {message}", file=log)
    try:
        exp.record_failure(run_id, message, code)
    except Exception as e:  # the store itself may be what failed
        print(f"run {run_id}: could not record the failure: {e}", file=log)


def _train_and_commit(exp, spec, log) -> int:
    import torch
    from safetensors.torch import save as save_safetensors

    from aal_k8s.config import config_from_dict
    from aal_k8s.data import load_dataset
    from aal_k8s.trainer import train_run

    cfg = config_from_dict(spec.config)
    torch.set_num_threads(_threads(cfg.train.threads))
    print(f"run {spec.describe()}", file=log)
    data = load_dataset(cfg.dataset)
    missing = [a for a in spec.heads if a not in data.attributes]
    if missing:
        raise AALError(f"run {spec.run_id}: dataset {spec.dataset!r} has no attribute(s) {missing}")

    def progress(epoch: int, entry: dict) -> None:
        acc = " ".join(f"{k}={v:.4f}" for k, v in entry["val_acc"].items())
        print(f"run {spec.run_id}: epoch {epoch} lr={entry['lr']:g} val {acc} ({entry['seconds']:.1f}s)", file=log)

    result = train_run(spec, data, on_epoch_end=progress)
    weights = save_safetensors(result.state_dict, metadata={"run_id": spec.run_id})
    exp.commit_run(spec, {"best.safetensors": weights}, result.metrics())
    print(f"run {spec.run_id}: committed (best epoch {result.best_epoch})", file=log)
    return 0

"""Submit the 780 Jobs of a CelebA-sized pairwise stage to a real API server, then cancel them all:
wall time and API calls of each step.

The Jobs are created suspended (``k8s.queue_name`` set, as with Kueue), so no pod starts and the
figures are the backend's and the API server's alone. Specs go to a temporary local-folder store.

    KUBECONFIG=/tmp/aal-testbed/kubeconfig python benchmarks/bench_k8s_scale.py

Needs a cluster (the k8s-testbed, see tests/k8s_testbed.py); creates and deletes its own namespace.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
import uuid


def commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Counting:
    """Counts the backend's API calls by verb (every call goes through ``KubernetesBackend.call``)."""

    def __init__(self, backend):
        self.calls: collections.Counter = collections.Counter()
        inner = backend.call

        def call(what, fn, *args, **kwargs):
            self.calls[getattr(fn, "__name__", str(fn))] += 1
            return inner(what, fn, *args, **kwargs)

        backend.call = call


def until_gone(batch, ns: str, timeout: float = 600.0) -> float:
    start = time.monotonic()
    while batch.list_namespaced_job(ns, limit=1).items:
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{ns}: Jobs still there after {timeout:g}s")
        time.sleep(0.5)
    return time.monotonic() - start


def run(namespace: str, store: str, log=None) -> dict:
    """Submit, submit again, count, cancel; returns the figures (and leaves the namespace empty)."""
    from aal_k8s.backends.k8s import KubernetesBackend
    from aal_k8s.config import load_config
    from aal_k8s.planner import plan_stage
    from aal_k8s.store import ExperimentStore, open_store

    cfg = load_config(
        overrides=[f"store.uri={store}", "executor.backend=k8s", f"k8s.namespace={namespace}",
                   "k8s.image=registry.example/aal-k8s:bench", "k8s.queue_name=bench",
                   "k8s.store_volume_claim=bench-store"],  # a folder store pods see through a PVC  # fmt: skip
        dataset="celeba",
    )
    specs = plan_stage("pairwise", cfg)
    exp = ExperimentStore(open_store(cfg.store.uri, cfg.store), cfg.experiment_name)
    out: dict = {"jobs": len(specs)}
    for step in ("submit", "submit again", "states", "cancel"):
        backend = KubernetesBackend(cfg, log=log)
        counted = Counting(backend)
        start = time.monotonic()
        if step.startswith("submit"):
            report = backend.submit(specs, exp)
            assert len(report.submitted) == len(specs) and not report.failed
        elif step == "states":
            states = backend.states(specs, exp)
            reasons = collections.Counter((s.state, s.reason) for s in states.values())
            out["reasons"] = dict(reasons)
        else:
            cancelled = backend.cancel(specs, exp)
            assert len(cancelled) == len(specs)
        out[step] = {"seconds": time.monotonic() - start, "calls": dict(counted.calls)}
    from kubernetes import client

    out["cancel"]["gone_after_seconds"] = until_gone(client.BatchV1Api(), namespace)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--namespace", default=f"aal-bench-{uuid.uuid4().hex[:6]}")
    args = p.parse_args()
    from kubernetes import client, config

    config.load_kube_config()
    core = client.CoreV1Api()
    core.create_namespace({"metadata": {"name": args.namespace}})
    try:
        with tempfile.TemporaryDirectory() as store:
            figures = run(args.namespace, store, log=sys.stderr)
    finally:
        core.delete_namespace(args.namespace)
    version = client.VersionApi().get_code()
    print(f"kube-apiserver {version.git_version}, git commit {commit()}, {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    for step in ("submit", "submit again", "states", "cancel"):
        f = figures[step]
        calls = ", ".join(f"{k} {v}" for k, v in sorted(f["calls"].items()))
        extra = f", all gone after {f['gone_after_seconds']:.1f}s" if "gone_after_seconds" in f else ""
        print(f"{step:>13}: {f['seconds']:7.1f}s  {sum(f['calls'].values()):5d} API calls ({calls}){extra}")
    print(f"states: {figures['reasons']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

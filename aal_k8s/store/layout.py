"""Where an experiment's artifacts live, and the run commit protocol.

Layout under ``<store>/<experiment>/``::

    runs/<run_id>/spec.json             the RunSpec (written at submit time)
    runs/<run_id>/best.safetensors      weights of the best epoch
    runs/<run_id>/failure.json          the last failed attempt (ignored once committed)
    runs/<run_id>/metrics.json          the commit record, written LAST
    reduce/summary.json                 reduce output (matrix, partners, lambda, final choice)
    reduce/pairwise_matrix.csv          row = attribute, column = partner, diagonal = single-task
    reduce/final.csv                    one row per attribute: the chosen classifier
    final/manifest.json                 the final model set (one classifier per attribute)
    final/models/<attribute>.safetensors
    report/report.md

A run is complete exactly when ``metrics.json`` exists. It lists every artifact with its size and
sha256, so readers see only committed runs and verify what they read.
"""

from __future__ import annotations

import hashlib
import json
import time

from aal_k8s.errors import StoreError
from aal_k8s.runspec import RunSpec
from aal_k8s.store.base import Store

COMMIT_FILE = "metrics.json"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ExperimentStore:
    def __init__(self, store: Store, experiment: str):
        self.store = store
        self.experiment = experiment

    def key(self, *parts: str) -> str:
        return "/".join((self.experiment, *parts))

    def run_key(self, run_id: str, name: str) -> str:
        return self.key("runs", run_id, name)

    # -- specs and commits -------------------------------------------------------------------
    def write_spec(self, spec: RunSpec) -> None:
        self.store.put_bytes(self.run_key(spec.run_id, "spec.json"), spec.to_json().encode())

    def read_spec(self, run_id: str) -> RunSpec:
        key = self.run_key(run_id, "spec.json")
        if not self.store.exists(key):
            raise StoreError(f"run {run_id}: no spec at {self.store.url(key)} (was the run submitted?)")
        return RunSpec.from_json(self.store.get_bytes(key).decode())

    def is_committed(self, run_id: str) -> bool:
        return self.store.exists(self.run_key(run_id, COMMIT_FILE))

    def commit_run(self, spec: RunSpec, artifacts: dict[str, bytes], metrics: dict) -> dict:
        """Write every artifact, then the commit record listing them with size and sha256."""
        listed = {}
        for name, data in artifacts.items():
            self.store.put_bytes(self.run_key(spec.run_id, name), data)
            listed[name] = {"size": len(data), "sha256": sha256_hex(data)}
        record = {
            **metrics,
            "spec": json.loads(spec.to_json()),
            "artifacts": listed,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.store.put_bytes(self.run_key(spec.run_id, COMMIT_FILE), json.dumps(record, indent=1).encode())
        return record

    def read_metrics(self, run_id: str) -> dict | None:
        """The commit record of ``run_id``, or None when the run is not committed."""
        key = self.run_key(run_id, COMMIT_FILE)
        if not self.store.exists(key):
            return None
        try:
            return json.loads(self.store.get_bytes(key))
        except json.JSONDecodeError:
            raise StoreError(f"{self.store.url(key)}: commit record is not valid JSON") from None

    def read_artifact(self, run_id: str, name: str) -> bytes:
        """An artifact of a committed run, verified against the size and sha256 in its record."""
        record = self.read_metrics(run_id)
        if record is None:
            raise StoreError(f"run {run_id} is not committed in {self.store.url(self.key('runs'))}")
        meta = record.get("artifacts", {}).get(name)
        if meta is None:
            raise StoreError(f"run {run_id} has no artifact {name!r}")
        key = self.run_key(run_id, name)
        return self.read_verified(key, meta["sha256"], meta["size"])

    def read_verified(self, key: str, sha256: str, size: int) -> bytes:
        data = self.store.get_bytes(key)
        if len(data) != size or sha256_hex(data) != sha256:
            raise StoreError(
                f"{self.store.url(key)}: checksum mismatch (expected {size} bytes sha256 {sha256[:12]}..., "
                f"got {len(data)} bytes sha256 {sha256_hex(data)[:12]}...)"
            )
        return data

    # -- failures ------------------------------------------------------------------------------
    def record_failure(self, run_id: str, message: str, exit_code: int) -> None:
        body = {
            "run_id": run_id,
            "message": message,
            "exit_code": exit_code,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.store.put_bytes(self.run_key(run_id, "failure.json"), json.dumps(body, indent=1).encode())

    def read_failure(self, run_id: str) -> dict | None:
        key = self.run_key(run_id, "failure.json")
        if self.is_committed(run_id) or not self.store.exists(key):
            return None
        return json.loads(self.store.get_bytes(key))

    # -- experiment-level JSON documents ------------------------------------------------------
    def put_json(self, *parts: str, obj) -> None:
        self.store.put_bytes(self.key(*parts), json.dumps(obj, indent=1, sort_keys=True).encode())

    def get_json(self, *parts: str):
        key = self.key(*parts)
        if not self.store.exists(key):
            return None
        return json.loads(self.store.get_bytes(key))

    def put_text(self, *parts: str, text: str) -> None:
        self.store.put_bytes(self.key(*parts), text.encode())

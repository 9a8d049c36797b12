"""Where an experiment's artifacts live, and the run commit protocol.

Layout under ``<store>/<experiment>/``::

    experiment.yaml                          the pinned config (create-only; aal_k8s.experiment)
    runs/<run_id>/spec.json                  the RunSpec (written at submit time)
    runs/<run_id>/attempts/<attempt>/best.safetensors
                                             weights of the best epoch, written by one attempt
    runs/<run_id>/attempts/<attempt>/checkpoints/epoch-0003.pt     a checkpoint (torch.save of
    runs/<run_id>/attempts/<attempt>/checkpoints/epoch-0003.json   tensors/primitives) and its
                                             record (size, sha256), written after it
    runs/<run_id>/attempts/<attempt>/tensorboard/events.out.tfevents.*
                                             TensorBoard scalars per epoch (aal_k8s/events.py)
    runs/<run_id>/attempts/<attempt>/worker.log
                                             that attempt's log, copied when it ends (aal_k8s.worker)
    runs/<run_id>/failure.json               the last failed attempt (ignored once committed)
    runs/<run_id>/local.log                  worker output (local backend)
    runs/<run_id>/metrics.json               the commit record, written LAST, create-only
    runs/<run_id>/quarantine/metrics-*.json  commit records that failed verification, moved aside
    reduce/summary.json                      reduce output (matrix, partners, lambda, final choice)
    reduce/pairwise_matrix.csv               row = attribute, column = partner, diagonal = single
    reduce/final.csv                         one row per attribute: the chosen classifier
    final/models/<attribute>.safetensors     the final model set, one classifier per attribute
    final/manifest.json                      its manifest (written after the models)
    report/report.md

Commit protocol. Every process executing a run is an *attempt* with its own id (``attempt_id``:
pod name or host, pid, random suffix), and writes only below ``attempts/<attempt>/``, so two pods of
one run (Kubernetes may start a Job's pod twice) never overwrite each other's files. Once its
artifacts are uploaded, an attempt creates ``metrics.json`` with a create-only write
(``Store.put_if_absent``: a hard link locally, ``If-None-Match: *`` on S3). Exactly one attempt
succeeds; the record names that attempt and lists every artifact with its key, size and sha256,
and carries a sha256 of itself. A run is complete exactly when ``metrics.json`` exists; readers
see only committed runs, and verify size and sha256 of every artifact (and of the record) they
read. A losing attempt deletes its own files and leaves the winner's alone.

A record that exists but fails verification (truncated by a crashed writer or a broken copy,
edited, or without its ``record_sha256``) makes the run *not* committed: readers report it by
name (``record_problem``), and ``submit`` or the run's next worker moves it to
``quarantine/`` (``quarantine_record``) so that the run is trained and committed again.

Checkpoints are written every epoch under the attempt; the newest ``checkpoint_keep`` of each
attempt are kept (older ones are deleted only after a newer one is complete). A restarted worker
(a new attempt) resumes from the newest checkpoint of any attempt whose record and sha256 check
out; a half-written one has no record, or fails its sha256, and is skipped. Checkpoints are deleted
once the run is committed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid

from aal_k8s.checksums import check_bytes, check_file, seal, sha256_hex, unseal
from aal_k8s.errors import AALError, CorruptRecordError, StoreError, StoreUnavailableError
from aal_k8s.runspec import RunSpec
from aal_k8s.store.base import Store

__all__ = ["ExperimentStore", "attempt_id"]  # the checksum helpers live in aal_k8s.checksums only

COMMIT_FILE = "metrics.json"
ATTEMPTS = "attempts"
CHECKPOINTS = "checkpoints"
_CKPT_RECORD = re.compile(r"attempts/([^/]+)/checkpoints/epoch-(\d+)\.json$")


def attempt_id() -> str:
    """A fresh id for this process's attempt at a run: ``AAL_K8S_ATTEMPT``, the pod name
    (``POD_NAME``, from the downward API) or the host name, then the pid and a random suffix, so
    two processes never share one (not even a pod's restarted container)."""
    base = os.environ.get("AAL_K8S_ATTEMPT") or os.environ.get("POD_NAME")
    if not base:
        base = f"{os.environ.get('HOSTNAME') or socket.gethostname() or 'host'}-{os.getpid()}"
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.")[:80] or "attempt"
    return f"{base}-{uuid.uuid4().hex[:8]}"


TEMP_MAX_AGE = 15 * 60  # seconds: a younger temp file may be a write still in progress
RECORD_SHA = "record_sha256"  # the commit record's checksum of itself (aal_k8s.checksums.seal)
QUARANTINE = "quarantine"
ATTEMPT_LOG = "worker.log"  # an attempt's log (aal_k8s.worker), kept after the commit
EVENTS_DIR = "tensorboard"  # an attempt's TensorBoard event files (aal_k8s.events); the winner's are kept


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_name(kind: str, value) -> str:
    """``value`` if it is a plain name (letters, digits, '.', '_', '-'; no leading dot, no '..'),
    else one line naming it: experiment names and run ids become store keys, and a
    ``--run ../../escape`` must not write outside the experiment."""
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value) or ".." in value:
        raise AALError(f"{kind} {value!r} is not a plain name (letters, digits, '.', '_', '-'; not starting with '.')")
    return value


class ExperimentStore:
    def __init__(self, store: Store, experiment: str, attempt: str | None = None):
        self.store = store
        self.experiment = check_name("experiment", experiment)
        self._attempt = attempt

    @property
    def attempt(self) -> str:
        """This process's attempt id (made on first use)."""
        if self._attempt is None:
            self._attempt = attempt_id()
        return self._attempt

    def key(self, *parts: str) -> str:
        if parts[:1] == ("runs",) and len(parts) > 1:
            check_name("run id", parts[1])
        return "/".join((self.experiment, *parts))

    def run_key(self, run_id: str, name: str) -> str:
        return self.key("runs", run_id, name)

    def attempt_key(self, run_id: str, name: str, attempt: str | None = None) -> str:
        return self.key("runs", run_id, ATTEMPTS, attempt or self.attempt, name)

    def _relative(self, key: str) -> str:
        return key.removeprefix(self.experiment + "/")

    # -- specs and commits -------------------------------------------------------------------
    def write_spec(self, spec: RunSpec) -> None:
        self.store.put_bytes(self.run_key(spec.run_id, "spec.json"), spec.to_json().encode())

    def read_spec(self, run_id: str) -> RunSpec:
        key = self.run_key(run_id, "spec.json")
        if not self.store.exists(key):
            raise StoreError(f"run {run_id}: no spec at {self.store.url(key)} (was the run submitted?)")
        try:
            return RunSpec.from_json(self.store.get_bytes(key).decode())
        except (ValueError, TypeError):
            raise StoreError(f"{self.store.url(key)}: not a valid run spec") from None

    def is_committed(self, run_id: str) -> bool:
        """True when the run's commit record exists and verifies (a corrupt one: False)."""
        try:
            return self.read_metrics(run_id) is not None
        except CorruptRecordError:
            return False

    def record_problem(self, run_id: str) -> str | None:
        """Why the run's commit record cannot be trusted (one line, naming it); None when there is
        no record or it verifies."""
        try:
            self.read_metrics(run_id)
        except CorruptRecordError as e:
            return e.message
        return None

    def quarantine_record(self, run_id: str) -> str | None:
        """Move a commit record that fails verification to ``quarantine/`` so that the run can be
        trained and committed again; returns the quarantine key, or None when the record is fine
        or absent. A valid record is never touched: the bytes are checked again right before the
        delete, so a record another attempt has just committed in its place stays."""
        key = self.run_key(run_id, COMMIT_FILE)
        if not self.store.exists(key):
            return None
        raw = self.store.get_bytes(key)
        try:
            self._parse_record(key, raw)
            return None
        except CorruptRecordError:
            pass
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.run_key(run_id, f"{QUARANTINE}/metrics-{stamp}-{uuid.uuid4().hex[:8]}.json")
        self.store.put_bytes(aside, raw)
        if self.store.exists(key) and self.store.get_bytes(key) == raw:
            self.store.delete(key)
        return aside

    def committed_ids(self) -> set[str]:
        """Ids of every committed run of the experiment: one listing, not one request per run."""
        root = self.key("runs") + "/"
        keys = self.store.list(self.key("runs"))
        return {k[len(root) :].split("/")[0] for k in keys if k.startswith(root) and k.endswith("/" + COMMIT_FILE)}

    def commit_run(self, spec: RunSpec, artifacts: dict[str, bytes], metrics: dict) -> dict:
        """Upload ``artifacts`` under this attempt, then create the commit record (create-only).

        Returns the run's commit record: this attempt's if it won, else the winner's (compare
        ``record["attempt"]`` with ``self.attempt``). The loser's files are deleted."""
        run_id = spec.run_id
        self.quarantine_record(run_id)  # a corrupt record must not block the create-only write
        existing = self.read_metrics(run_id)
        if existing is not None:
            self.discard_attempt(run_id)
            return existing
        listed = {}
        for name, data in artifacts.items():
            key = self.attempt_key(run_id, name)
            self.store.put_bytes(key, data)
            listed[name] = {"key": self._relative(key), "size": len(data), "sha256": sha256_hex(data)}
        record = {
            **metrics,
            "spec": json.loads(spec.to_json()),
            "artifacts": listed,
            "attempt": self.attempt,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        record = seal(record, RECORD_SHA)
        body = json.dumps(record, indent=1).encode()
        try:
            created = self.store.put_if_absent(self.run_key(run_id, COMMIT_FILE), body)
        except StoreUnavailableError:
            # every answer lost: the record may exist all the same; ours if it holds our bytes
            try:
                landed = self.read_metrics(run_id)
            except StoreError:
                landed = None
            if landed is None or landed.get(RECORD_SHA) != record[RECORD_SHA]:
                raise
            created = True
        if created:
            # The read-back decides: a server that let a second create succeed (or a proxy that
            # dropped the condition) keeps one record, and the checksum below says whose it is.
            won = self.read_metrics(run_id)
            if won is None:
                raise StoreError(f"{self.store.url(self.run_key(run_id, COMMIT_FILE))}: commit record gone after its write")
        else:
            # Lost, or our own write landed and its response was lost (the retry then sees 412);
            # and on stores without conditional writes this read-back is the arbiter.
            won = self.read_metrics(run_id)
            if won is None:
                raise StoreError(f"{self.store.url(self.run_key(run_id, COMMIT_FILE))}: commit failed")
        if won.get("attempt") == self.attempt and won.get(RECORD_SHA) == record[RECORD_SHA]:
            self.clean_committed(run_id, won)
        else:
            self.discard_attempt(run_id)
        return won

    def leftovers(self, run_id: str, record: dict | None = None) -> dict[str, int]:
        """``{key: size}`` of a committed run's files that nothing will read again: every key below
        ``attempts/`` its record does not list (checkpoints of every attempt, a losing attempt's
        weights) and temp files of interrupted writes below the run. Empty when not committed:
        an uncommitted run's files may belong to a worker that is still running."""
        record = record if record is not None else self.read_metrics(run_id)
        if record is None:
            return {}
        keep = {self.key(m["key"]) for m in record["artifacts"].values() if isinstance(m, dict) and "key" in m}
        curves = self.key("runs", run_id, ATTEMPTS, str(record.get("attempt")), EVENTS_DIR) + "/"
        found = {
            k: n for k, n in self.store.list_sizes(self.key("runs", run_id, ATTEMPTS)).items()
            if k not in keep and not k.endswith(f"/{ATTEMPT_LOG}")  # logs are small and explain what happened
            and not k.startswith(curves)  # the committed attempt's TensorBoard curves: what users open
        }  # fmt: skip
        found.update(self.store.temp_files(self.key("runs", run_id), TEMP_MAX_AGE))
        return found

    def clean_committed(self, run_id: str, record: dict | None = None) -> dict[str, int]:
        """Delete ``leftovers`` (idempotent: a crash half-way is finished by the next call);
        returns what was deleted."""
        found = self.leftovers(run_id, record)
        for key in found:
            self.store.delete(key)
        return found

    def discard_attempt(self, run_id: str) -> None:
        """Delete this attempt's files (after another attempt committed the run)."""
        for key in self.store.list(self.key("runs", run_id, ATTEMPTS, self.attempt)):
            self.store.delete(key)

    def read_metrics(self, run_id: str) -> dict | None:
        """The commit record of ``run_id`` (its own sha256 verified), or None when not committed;
        ``CorruptRecordError`` naming it when it is truncated, unsealed or altered."""
        key = self.run_key(run_id, COMMIT_FILE)
        if not self.store.exists(key):
            return None
        return self._parse_record(key, self.store.get_bytes(key))

    def _parse_record(self, key: str, raw: bytes) -> dict:
        where = self.store.url(key)
        record = unseal(raw, RECORD_SHA, where, "commit record", CorruptRecordError)
        if not isinstance(record.get("artifacts"), dict):
            raise CorruptRecordError(f"{where}: commit record lists no artifacts")
        return record

    def artifact_key(self, run_id: str, name: str, record: dict | None = None) -> str:
        """The store key of a committed run's artifact, as its (verified) record lists it."""
        record = record if record is not None else self.read_metrics(run_id)
        meta = self._artifact_meta(run_id, name, record)
        return self.key(meta["key"])

    def _artifact_meta(self, run_id: str, name: str, record: dict | None) -> dict:
        if record is None:
            raise StoreError(f"run {run_id} is not committed in {self.store.url(self.key('runs'))}")
        meta = record["artifacts"].get(name)
        if meta is None:
            raise StoreError(f"run {run_id} has no artifact {name!r}")
        ok = isinstance(meta, dict) and isinstance(meta.get("key"), str) and isinstance(meta.get("sha256"), str)
        if not ok or isinstance(meta.get("size"), bool) or not isinstance(meta.get("size"), int):
            # no fallback to a conventional key or to an unchecked read: the record is sealed, so
            # this only happens with a record from another program
            raise CorruptRecordError(f"run {run_id}: artifact {name!r} in its commit record lacks key, size or sha256")
        return meta

    def read_artifact(self, run_id: str, name: str) -> bytes:
        """An artifact of a committed run, verified against the size and sha256 in its record."""
        meta = self._artifact_meta(run_id, name, self.read_metrics(run_id))
        return self.read_verified(self.key(meta["key"]), meta["sha256"], meta["size"])

    def read_verified(self, key: str, sha256: str, size: int) -> bytes:
        data = self.store.get_bytes(key)
        check_bytes(self.store.url(key), data, sha256, size)
        return data

    def download_verified(self, key: str, sha256: str, size: int, path: str) -> None:
        """Fetch ``key`` to ``path`` (temp file + rename); the temp file is checked before the
        rename, so ``path`` only ever holds verified bytes."""
        folder = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(folder, f".part-{os.path.basename(path)}-{uuid.uuid4().hex[:8]}")
        try:
            self.store.get_file(key, tmp)
            check_file(self.store.url(key), tmp, sha256, size)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_key(self, run_id: str, epoch: int, attempt: str | None = None, ext: str = "pt") -> str:
        return self.attempt_key(run_id, f"{CHECKPOINTS}/epoch-{epoch:04d}.{ext}", attempt)

    def write_checkpoint(self, run_id: str, epoch: int, data: bytes, keep: int = 2) -> str:
        """Write the checkpoint, then its record; then delete this attempt's older ones beyond
        ``keep`` (never the one just written). Returns the checkpoint's key."""
        key = self.checkpoint_key(run_id, epoch)
        self.store.put_bytes(key, data)
        rec = {
            "epoch": epoch,
            "key": self._relative(key),
            "size": len(data),
            "sha256": sha256_hex(data),
            "attempt": self.attempt,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.store.put_bytes(self.checkpoint_key(run_id, epoch, ext="json"), json.dumps(rec, indent=1).encode())
        mine = sorted(
            int(m.group(2))
            for k in self.store.list(self.key("runs", run_id, ATTEMPTS, self.attempt, CHECKPOINTS))
            if (m := _CKPT_RECORD.search(k))
        )
        for old in mine[: -max(1, keep)]:
            if old == epoch:
                continue
            self.store.delete(self.checkpoint_key(run_id, old, ext="json"))  # record first
            self.store.delete(self.checkpoint_key(run_id, old))
        return key

    def latest_checkpoint(self, run_id: str, log=None) -> tuple[int, bytes, str] | None:
        """``(epoch, bytes, url)`` of the newest checkpoint of any attempt that verifies; None if
        there is none. Checkpoints without a record or failing their sha256 are skipped."""
        found = []
        for k in self.store.list(self.key("runs", run_id, ATTEMPTS)):
            m = _CKPT_RECORD.search(k)
            if m:
                found.append((int(m.group(2)), k))
        for epoch, rec_key in sorted(found, reverse=True):
            try:
                rec = json.loads(self.store.get_bytes(rec_key))
                data = self.read_verified(self.key(rec["key"]), rec["sha256"], rec["size"])
                return epoch, data, self.store.url(self.key(rec["key"]))
            except StoreUnavailableError:
                raise  # the store is down: do not silently fall back to an older checkpoint
            except (StoreError, ValueError, KeyError, TypeError) as e:
                if log is not None:
                    print(f"run {run_id}: skipping checkpoint {self.store.url(rec_key)}: {e}", file=log)
        return None

    # -- failures ------------------------------------------------------------------------------
    def record_failure(self, run_id: str, message: str, exit_code: int) -> None:
        body = {
            "run_id": run_id,
            "message": message,
            "exit_code": exit_code,
            "attempt": self.attempt,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.store.put_bytes(self.run_key(run_id, "failure.json"), json.dumps(body, indent=1).encode())

    def read_failure(self, run_id: str) -> dict | None:
        key = self.run_key(run_id, "failure.json")
        if self.is_committed(run_id) or not self.store.exists(key):
            return None
        try:
            return json.loads(self.store.get_bytes(key))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"message": f"unreadable failure record {self.store.url(key)}"}

    # -- experiment-level JSON documents ------------------------------------------------------
    def put_json(self, *parts: str, obj) -> None:
        self.store.put_bytes(self.key(*parts), json.dumps(obj, indent=1, sort_keys=True).encode())

    def get_json(self, *parts: str):
        key = self.key(*parts)
        if not self.store.exists(key):
            return None
        try:
            return json.loads(self.store.get_bytes(key))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreError(f"{self.store.url(key)}: not valid JSON (truncated or corrupted)") from None

    def put_sealed(self, *parts: str, obj: dict, field: str) -> dict:
        """Write ``obj`` with its own sha256 under ``field`` (``aal_k8s.checksums.seal``); returns
        what was written."""
        sealed = seal(obj, field)
        self.put_json(*parts, obj=sealed)
        return sealed

    def get_sealed(self, *parts: str, field: str, what: str) -> dict | None:
        """A document written by ``put_sealed``, its checksum verified and ``field`` removed; None
        when absent; ``StoreError`` naming it when truncated, unsealed or altered."""
        key = self.key(*parts)
        if not self.store.exists(key):
            return None
        doc = unseal(self.store.get_bytes(key), field, self.store.url(key), what)
        doc.pop(field)
        return doc

    def put_text(self, *parts: str, text: str) -> None:
        self.store.put_bytes(self.key(*parts), text.encode())

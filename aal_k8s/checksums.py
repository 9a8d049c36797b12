"""Every sha256 in aal-k8s: of bytes, of files, and of JSON documents that carry their own.

Artifacts (weights, checkpoints, pack shards, model files) are listed with ``size`` and ``sha256``
in the document that points at them and checked on every read (``check_bytes``, ``check_file``).
The documents themselves (commit records, ``reduce/summary.json``, ``final/manifest.json``) are
*sealed*: they carry a sha256 of their own content under one field (``seal``), and a reader
refuses one whose field is missing or does not match (``unseal``). There is no fallback for a
document without its checksum: an edited or truncated document must never decide a result.
"""

from __future__ import annotations

import hashlib
import json

from aal_k8s.errors import AALError, StoreError


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> tuple[int, str]:
    """``(size, sha256)`` of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _mismatch(where: str, size: int, sha256: str, got_size: int, got: str, error: type[AALError]) -> AALError:
    return error(
        f"{where}: checksum mismatch (expected {size} bytes sha256 {str(sha256)[:12]}..., "
        f"got {got_size} bytes sha256 {got[:12]}...)"
    )


def check_bytes(where: str, data: bytes, sha256: str, size: int, error: type[AALError] = StoreError) -> None:
    """``error`` naming ``where`` unless ``data`` has the expected size and sha256."""
    got = sha256_hex(data)
    if len(data) != size or got != sha256:
        raise _mismatch(where, size, sha256, len(data), got, error)


def check_file(where: str, path: str, sha256: str, size: int, error: type[AALError] = StoreError) -> None:
    got_size, got = file_sha256(path)
    if got_size != size or got != sha256:
        raise _mismatch(where, size, sha256, got_size, got, error)


def document_sha256(doc: dict, field: str) -> str:
    """sha256 of ``doc`` without ``field``, as canonical JSON (sorted keys): independent of how
    the document was indented when written."""
    body = {k: v for k, v in doc.items() if k != field}
    return sha256_hex(json.dumps(body, sort_keys=True).encode())


def seal(doc: dict, field: str) -> dict:
    """``doc`` with ``field`` set to its own sha256 (any previous value replaced)."""
    out = {k: v for k, v in doc.items() if k != field}
    out[field] = document_sha256(out, field)
    return out


def unseal(raw: bytes, field: str, where: str, what: str, error: type[AALError] = StoreError) -> dict:
    """The JSON object in ``raw`` after checking its own sha256 under ``field``; ``error`` naming
    ``where`` and ``what`` (e.g. "commit record") when it is unreadable, truncated, unsealed or
    altered."""
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise error(f"{where}: {what} is not valid JSON (truncated or corrupted)") from None
    if not isinstance(doc, dict):
        raise error(f"{where}: {what} is not a JSON object")
    if field not in doc:
        raise error(f"{where}: {what} has no {field} (written by an older version, or altered)")
    if doc[field] != document_sha256(doc, field):
        raise error(f"{where}: checksum mismatch (the {what} was altered or damaged)")
    return doc

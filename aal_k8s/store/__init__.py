"""Blob stores (local folder, S3-compatible) and the experiment layout with its commit protocol.

``open_store(uri)`` picks the implementation from the URI; ``ExperimentStore`` knows where each
artifact of an experiment lives (see ``aal_k8s.store.layout``).
"""

from __future__ import annotations

from aal_k8s.errors import StoreError
from aal_k8s.store.base import Store
from aal_k8s.store.layout import ExperimentStore, sha256_hex
from aal_k8s.store.local import LocalStore

__all__ = ["Store", "LocalStore", "ExperimentStore", "open_store", "sha256_hex"]


def open_store(uri: str) -> Store:
    """``s3://bucket/prefix`` -> S3 store; ``file:///path`` or a plain path -> local folder."""
    if uri.startswith("s3://"):
        try:
            from aal_k8s.store.s3 import S3Store
        except ImportError as e:  # pragma: no cover - boto3 is a dependency
            raise StoreError(f"store {uri}: S3 support is unavailable ({e})") from None
        return S3Store(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(f"store {uri!r}: unsupported scheme (use a path, file:// or s3://)")
    return LocalStore(uri.removeprefix("file://"))

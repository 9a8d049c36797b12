"""Blob stores (local folder, S3-compatible) and the experiment layout with its commit protocol.

``open_store(uri, options)`` picks the implementation from the URI; ``ExperimentStore`` knows
where each artifact of an experiment lives (see ``aal_k8s.store.layout``).

Store options (the ``store`` config section minus ``uri``) reach worker processes through the
``AAL_K8S_STORE_OPTIONS`` environment variable (JSON, no credentials in it): the CLI passes
``cfg.store`` directly; a worker, which only gets the URI on its command line, calls
``open_store(uri)`` and the options come from that variable (defaults when unset). Backends set it
with ``store_options_env(cfg.store)``.
"""

from __future__ import annotations

import dataclasses
import json
import os

from aal_k8s.config import StoreConfig, store_config_from_dict
from aal_k8s.errors import ConfigError, StoreError
from aal_k8s.store.base import Store
from aal_k8s.store.layout import ExperimentStore, attempt_id
from aal_k8s.store.local import LocalStore

__all__ = [
    "STORE_OPTIONS_ENV",
    "ExperimentStore",
    "LocalStore",
    "Store",
    "attempt_id",
    "open_store",
    "store_options_env",
    "store_options_from_env",
]  # fmt: skip

STORE_OPTIONS_ENV = "AAL_K8S_STORE_OPTIONS"


def store_options_env(options: StoreConfig) -> dict[str, str]:
    """``{AAL_K8S_STORE_OPTIONS: json}`` for a worker's environment (the store section minus uri)."""
    body = {k: v for k, v in dataclasses.asdict(options).items() if k != "uri"}
    return {STORE_OPTIONS_ENV: json.dumps(body, sort_keys=True)}


def store_options_from_env(uri: str = "") -> StoreConfig:
    """The store options a backend passed in ``AAL_K8S_STORE_OPTIONS``; defaults when unset."""
    raw = os.environ.get(STORE_OPTIONS_ENV, "").strip()
    if not raw:
        return StoreConfig(uri=uri or StoreConfig.uri)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise ConfigError([f"{STORE_OPTIONS_ENV}: not valid JSON"]) from None
    opts, problems = store_config_from_dict(data, uri or StoreConfig.uri)
    if problems:
        raise ConfigError([f"{STORE_OPTIONS_ENV}: {p}" for p in problems])
    return opts


def open_store(uri: str, options: StoreConfig | None = None) -> Store:
    """``s3://bucket/prefix`` -> S3 store; ``file:///path`` or a plain path -> local folder.

    ``options`` is the ``store`` config section; None reads it from ``AAL_K8S_STORE_OPTIONS``."""
    if options is None:
        options = store_options_from_env(uri)
    if uri.startswith("s3://"):
        try:
            from aal_k8s.store.s3 import S3Store
        except ImportError as e:  # pragma: no cover - boto3 is a dependency
            raise StoreError(f"store {uri}: S3 support is unavailable ({e})") from None
        return S3Store(uri, options)
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(f"store {uri!r}: unsupported scheme (use a path, file:// or s3://)")
    return LocalStore(uri.removeprefix("file://"))

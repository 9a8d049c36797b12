"""The experiment as a pinned object: ``<experiment>/experiment.yaml`` in the store.

The first command that writes to an experiment (submit, pipeline, reduce, final) records the
resolved config sections that decide what its runs compute, with the aal-k8s version, the git
commit (when known) and the torch version; the write is create-only. Every later command starts
from that record, so run ids are the experiment's and not whatever the current flags say: commands
that only read (status, report, download, logs) need no dataset or config flags at all, and a flag
that would change what a run computes is an error naming each key with its pinned and new value.

Two ways past that error: another ``--experiment`` name (a new experiment, pinned afresh), or
``--override-pinned``, which applies the change and records it (when, which keys, old and new
values) in the record's ``overrides`` list. Keys that only change how fast or where a run goes
(``aal_k8s.runspec.EXECUTION_ONLY``) and the store/executor/k8s sections are never pinned.

``SELECTION_KEYS`` (how partners and the final classifiers are chosen) need no override: a writing
command applies a change of them to the record and logs it there (``overrides``, marked
``selection``), so later commands without flags follow the latest choice.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from typing import Any

import yaml

from aal_k8s.checksums import document_sha256, seal
from aal_k8s.config import Config, load_config
from aal_k8s.errors import AALError, StoreError
from aal_k8s.runspec import EXECUTION_ONLY

PINNED_FILE = "experiment.yaml"
PINNED_SHA = "record_sha256"  # the record's checksum of itself (aal_k8s.checksums.seal)
#: The config sections whose values change what an experiment's runs compute (less EXECUTION_ONLY):
#: the runs' own sections, and those that choose partners, lambdas and the final classifiers.
PINNED_SECTIONS = ("dataset", "model", "train", "adversarial", "affinity")


#: Keys that choose among committed runs rather than change what any run computes: reduce picks
#: partners (by method, test and minimum drop) from the discovery runs already in the store, and
#: final picks each attribute's classifier. A run's id and result do not depend on them (they are
#: not in RESULT_KEYS_V1), and reduce keeps every method's partners side by side, so switching,
#: e.g. ``--partners-from affinity`` after pairwise, orphans nothing: it plans the adversarial runs
#: of the new partners and keeps the others. The lambda grid, by contrast, defines the protocol
#: and stays pinned.
#: ``adversarial.seeds`` likewise adds replicate runs (stage seeds) and changes none that exist.
SELECTION_KEYS = (
    "adversarial.partners_from", "adversarial.partner_test", "adversarial.min_drop", "adversarial.final_selection",
    "adversarial.seeds",
)  # fmt: skip


class DriftError(AALError):
    """The current flags would change what a pinned experiment's runs compute."""


def pinned_key(exp) -> str:
    return exp.key(PINNED_FILE)


def read_pinned(exp) -> dict | None:
    """The experiment's pinned record; None when it has none yet."""
    key = pinned_key(exp)
    if not exp.store.exists(key):
        return None
    try:
        record = yaml.safe_load(exp.store.get_bytes(key).decode())
    except (yaml.YAMLError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise StoreError(f"{exp.store.url(key)}: not a pinned experiment record (a mapping with a config)")
    # it decides every run id: an edit by hand (or a damaged copy) must not silently re-plan runs
    if record.get(PINNED_SHA) != document_sha256(record, PINNED_SHA):
        raise StoreError(
            f"{exp.store.url(key)}: checksum mismatch or no {PINNED_SHA} (the pinned record was altered); "
            "change it with --override-pinned, not by hand"
        )
    record.pop(PINNED_SHA)
    return record


def pinned_config(cfg: Config) -> dict[str, Any]:
    """The sections of ``cfg`` an experiment pins, as plain data."""
    full = cfg.to_dict()
    return {s: full[s] for s in PINNED_SECTIONS}


def new_record(cfg: Config) -> dict[str, Any]:
    return {
        "experiment": cfg.experiment_name,
        "created": _now(),
        "aal_k8s_version": _version("aal-k8s"),
        "git_commit": _git_commit(),
        "torch_version": _version("torch"),
        "config": pinned_config(cfg),
        "overrides": [],
    }


def drift(pinned: dict[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, pinned value, new value) for every result-changing key where ``cfg`` differs (a
    change of ``SELECTION_KEYS`` is not drift: see ``pinned_changes``)."""
    return [c for c in pinned_changes(pinned, cfg) if c[0] not in SELECTION_KEYS]


def pinned_changes(pinned: dict[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, pinned value, new value) for every pinned key where ``cfg`` differs.

    A key the record lacks (added to the config since it was pinned) is pinned at its default."""
    defaults = Config().to_dict()
    now = pinned_config(cfg)
    out: list[tuple[str, Any, Any]] = []
    for section in PINNED_SECTIONS:
        _compare(pinned.get(section) or {}, now[section], defaults[section], section, out)
    return out


def _compare(old: dict, new: dict, default: dict, path: str, out: list) -> None:
    for k, value in new.items():
        key = f"{path}.{k}"
        if key in EXECUTION_ONLY:
            continue
        was = old.get(k, default.get(k))
        if isinstance(value, dict) and isinstance(was, dict):
            _compare(was, value, default.get(k) or {}, key, out)
        elif was != value:
            out.append((key, was, value))


def drift_message(exp, changes: list[tuple[str, Any, Any]]) -> str:
    keys = ", ".join(f"{k} {_show(old)} -> {_show(new)}" for k, old, new in changes)
    return (
        f"experiment {exp.experiment!r} is pinned in {exp.store.url(pinned_key(exp))} and these flags change "
        f"what its runs compute: {keys}; drop them, name a new experiment (--experiment), "
        "or pass --override-pinned to apply and record the change"
    )


def resolve(flags: Config, exp, *, config_file: str | None, overrides: list[str], dataset: str | None,
            override: bool = False) -> Config:
    """The config a command runs with: ``flags`` on an experiment not pinned yet, else the pinned
    record with the same flags on top, refused on result-changing drift unless ``override``.
    Writes nothing: a command that writes calls ``ensure_pinned`` before its first write."""
    record = read_pinned(exp)
    if record is None:
        return flags
    cfg = load_config(config_file, overrides, dataset=dataset, base=record["config"])
    changes = drift(record["config"], cfg)
    if changes and not override:
        raise DriftError(drift_message(exp, changes))
    return cfg


def ensure_pinned(exp, cfg: Config) -> None:
    """Make ``cfg`` (from ``resolve``) the experiment's pinned config: create the record
    (create-only: of concurrent first writers one wins, and the others' flags are checked against
    it), or record the overrides ``resolve`` let through (when, each key's old and new value)."""
    record = read_pinned(exp)
    if record is None:
        _check_unpinned_runs(exp, cfg)
        if exp.store.put_if_absent(pinned_key(exp), _dump(new_record(cfg))):
            return
        record = read_pinned(exp)
        changes = drift(record["config"], cfg)
        if changes:
            raise DriftError(drift_message(exp, changes))
        return
    found = pinned_changes(record["config"], cfg)
    if found:
        record["config"] = pinned_config(cfg)
        entry = {"at": _now(), "changes": {k: {"old": old, "new": new} for k, old, new in found}}
        if all(k in SELECTION_KEYS for k, _, _ in found):
            entry["selection"] = True  # applied without --override-pinned: it chooses runs, computes none
        record.setdefault("overrides", []).append(entry)
        exp.store.put_bytes(pinned_key(exp), _dump(record))


def _check_unpinned_runs(exp, cfg: Config) -> None:
    """An experiment made before pinning existed has committed runs and no record: pin it only
    with flags that its runs were made with (some committed run is one of the flags' discovery
    runs), not with a forgotten flag that would orphan all of them."""
    from aal_k8s.planner import plan_stage
    from aal_k8s.stages import DISCOVERY_STAGES

    committed = exp.committed_ids()
    if not committed:
        return
    planned = {s.run_id for st in DISCOVERY_STAGES for s in plan_stage(st, cfg)}
    if not committed & planned:
        raise DriftError(
            f"experiment {exp.experiment!r} has {len(committed)} committed runs and no {PINNED_FILE} yet, and none "
            "of them is a run of these flags: pass the flags it was run with (the experiment is then pinned "
            "with them), or name a new experiment (--experiment)"
        )


def _dump(record: dict) -> bytes:
    return yaml.safe_dump(seal(record, PINNED_SHA), sort_keys=False, default_flow_style=False).encode()


def _show(value: Any) -> str:
    return "(unset)" if value is None else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """``AAL_K8S_GIT_COMMIT`` (images set it at build time), else the checkout aal-k8s runs from."""
    env = os.environ.get("AAL_K8S_GIT_COMMIT", "").strip()
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None

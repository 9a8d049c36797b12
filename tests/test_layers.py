"""The import-layer contract of pyproject.toml ([tool.importlinter], docs/architecture.md): CI runs
only pytest, so the contract is checked here. A failure prints import-linter's report: which
module imports which, against the layers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the test extra")

ROOT = Path(__file__).resolve().parents[1]
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"
)


def _lint(where: Path) -> subprocess.CompletedProcess:
    """import-linter over the ``aal_k8s`` found first on the path from ``where`` (a subprocess, so
    the package this test session imported does not stand in for the tree being checked)."""
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run([sys.executable, "-c", LINT], cwd=where, env=env, capture_output=True, text=True, timeout=300)


def test_the_layers_and_acyclic_contracts_are_kept():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


def test_a_wrong_way_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: a core module importing the protocol layer (even lazily,
    inside a function) fails it, naming the import."""
    shutil.copytree(ROOT / "aal_k8s", tmp_path / "aal_k8s", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "aal_k8s" / "config.py", "a") as f:
        f.write("\n\ndef _wrong_way():\n    from aal_k8s import reduce  # noqa: F401\n")
    r = _lint(tmp_path)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "aal_k8s.config -> aal_k8s.reduce" in r.stdout, r.stdout + r.stderr

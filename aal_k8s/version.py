"""Which code this is: the installed package's version, plus the git commit of a source checkout."""

from __future__ import annotations

import functools
import os
import subprocess


def package_version() -> str:
    """The installed aal-k8s version (pyproject.toml is its one source)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aal-k8s")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


@functools.cache
def code_version() -> str:
    """``0.1.0`` or, from a git checkout (an editable install), ``0.1.0 (git 1a2b3c4, modified)``."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(
            ["git", "-C", here, "describe", "--always", "--dirty=+modified", "--abbrev=10"],
            capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # no git (e.g. the container image)
        return package_version()
    if rev.returncode != 0 or not rev.stdout.strip():
        return package_version()
    commit, _, modified = rev.stdout.strip().partition("+")
    return f"{package_version()} (git {commit}{', modified' if modified else ''})"

"""What the benchmark scripts share: running the CLI in-process, and the provenance a record in
BENCHMARKS.md carries (git commit, CPU model)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aal_k8s.cli import main  # noqa: E402


def cli(argv: list[str], log: str | None = None) -> None:
    """``aal-k8s ARGV`` in this process; exits with the command's last output when it fails.
    ``log``: also keep its stdout and stderr in this file (a pipeline's progress is long)."""
    out = io.StringIO()
    with redirect_stderr(out), (redirect_stdout(out) if log else redirect_stdout(sys.stdout)):
        code = main(argv)
    if log:
        with open(log, "a") as f:
            f.write(out.getvalue())
    if code != 0:
        sys.exit(f"aal-k8s {' '.join(argv)}: exit {code}\n{out.getvalue()[-2000:]}")


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
        return rev + ("-dirty" if dirty.strip() else "")
    except Exception:
        return "unknown"


def cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"

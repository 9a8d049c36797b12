"""The worker image matches what is tested: the Dockerfile's torch pins sit inside pyproject.toml's
range (the one source of truth), the torch these tests run with does too, and both were built with
the same CUDA major. Docker is not needed: the files are parsed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def dockerfile_args(text: str) -> dict[str, str]:
    """Global ``ARG NAME=value`` defaults (those before the first FROM)."""
    head = text.split("\nFROM ", 1)[0]
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", head, re.M))


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement(name: str) -> Requirement:
    reqs = {Requirement(r).name: Requirement(r) for r in project()["project"]["dependencies"]}
    return reqs[name]


def test_the_dockerfile_pins_a_torch_and_torchvision_inside_the_tested_range():
    args = dockerfile_args((ROOT / "Dockerfile").read_text())
    for name, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        spec = requirement(name).specifier
        assert spec, f"pyproject.toml gives {name} no version range"
        assert Version(args[arg]) in spec, f"Dockerfile {arg}={args[arg]} is outside pyproject's {name}{spec}"


def test_the_tests_run_on_a_torch_inside_the_range_the_image_is_held_to():
    installed = Version(torch.__version__.split("+")[0])
    assert installed in requirement("torch").specifier, (
        f"these tests run torch {installed}, outside pyproject's torch{requirement('torch').specifier}: "
        "run the suite on it, then move the range and the Dockerfile's pins together"
    )


def test_the_image_builds_with_the_cuda_major_of_the_tested_torch():
    if torch.version.cuda is None:
        pytest.skip("this torch is a CPU build: no CUDA version to compare")
    args = dockerfile_args((ROOT / "Dockerfile").read_text())
    assert args["CUDA_VERSION"].split(".")[0] == torch.version.cuda.split(".")[0], (
        f"Dockerfile CUDA_VERSION={args['CUDA_VERSION']}, tested torch {torch.__version__} has CUDA {torch.version.cuda}"
    )


def test_every_stage_installs_the_pinned_versions_and_no_other_torch():
    text = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install ([^\n\\]+)", text)
    torch_installs = [line for line in installs if re.search(r"\btorch\b", line)]
    assert len(torch_installs) == 2, installs  # the build stage and the runtime stage
    for line in torch_installs:
        assert '"torch==${TORCH_VERSION}"' in line and '"torchvision==${TORCHVISION_VERSION}"' in line, line
    assert not re.search(r"\d+\.\d+\.\d+-cuda|pytorch/pytorch:", text), "a hard-coded base image version"


def test_build_only_packages_are_not_runtime_dependencies():
    meta = project()
    runtime = {Requirement(r).name for r in meta["project"]["dependencies"]}
    build = {Requirement(r).name for r in meta["build-system"]["requires"]}
    assert {"ninja", "pybind11"} <= build
    assert not {"ninja", "pybind11", "setuptools", "wheel"} & runtime


def test_every_file_the_dockerignore_lets_into_the_build_exists():
    kept = [ln[1:].rstrip("/") for ln in (ROOT / ".dockerignore").read_text().split() if ln.startswith("!")]
    assert "LICENSE" in kept
    missing = [k for k in kept if not (ROOT / k).exists()]
    assert not missing, f".dockerignore keeps files that do not exist: {missing}"
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert project()["project"]["license"] == {"text": "Apache-2.0"}

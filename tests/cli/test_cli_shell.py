"""The command line as a shell sees it: --help without the heavy libraries, --version, completion."""

import shutil
import subprocess
import sys

import pytest

from aal_k8s.cli import main

HEAVY = ("torch", "torchvision", "scipy", "matplotlib", "numpy", "boto3", "kubernetes")


@pytest.mark.parametrize("argv", [["--help"], ["pipeline", "--help"], ["report", "--help"], ["--version"]])
def test_help_and_version_import_no_heavy_library(argv):
    code = (
        "import sys\nfrom aal_k8s.cli import main\n"
        f"rc = main({argv!r})\n"
        f"print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == "0 []"


def test_version_names_the_installed_package(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"aal-k8s {version('aal-k8s')}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    "words, expected",
    [(["pip"], "pipeline"), (["report", "--out"], "--output"), (["pipeline", "--back"], "--backend")],
)
def test_bash_completion_completes_subcommands_and_their_options(words, expected, capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    line = " ".join(["aal-k8s", *words])
    probe = (
        f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words)}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n"
        "_shtab_aal_k8s aal-k8s; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60).stdout.split()
    assert expected in out


def test_zsh_completion_is_a_compdef_for_the_command(capsys):
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef aal-k8s") and "pipeline" in script and "--partners-from" in script


def test_completion_for_an_unknown_shell_is_one_line_exit_2(capsys):
    assert main(["completion", "fish"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid choice: 'fish'" in err


def test_predict_on_cuda_without_a_gpu_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["predict", "--models", str(tmp_path), str(tmp_path / "x.png"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--device: cuda was asked for, but this machine has no usable CUDA device" in err

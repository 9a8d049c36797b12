"""benchmarks/gpu_campaign.py: its dry run goes through every step on the CPU (so the script a GPU
session runs once, with minutes of device time, is known to work up to the device itself), a failing
or overrunning step is recorded without losing the others, and the targets are judged from the
figures."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_campaign.py"


def load_campaign():
    spec = importlib.util.spec_from_file_location("gpu_campaign", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def run_campaign(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip


@pytest.mark.slow
def test_the_dry_run_goes_through_every_step_on_the_cpu_and_writes_the_record(tmp_path):
    out = tmp_path / "out"
    # as on the GPU machine, whose image has neither the S3 nor the Kubernetes client
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("boto3", "botocore", "kubernetes", "moto"):
        (blocked / f"{name}.py").write_text("raise ImportError('not installed on the GPU machine')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(blocked), os.environ.get("PYTHONPATH")) if p))
    proc = run_campaign(out, "--commit", "abc1234", env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    doc = json.loads((out / "campaign.json").read_text())
    steps = {s["name"]: s for s in doc["steps"]}
    assert list(steps) == ["env", "build", "tests", "fused_heads", "worker_epoch", "input_pipeline"]
    assert {s["status"] for s in steps.values()} == {"ok"}, {n: s["note"] for n, s in steps.items()}

    # what BENCHMARKS.md records: device, date, commit, torch and CUDA versions
    md = (out / "campaign.md").read_text()
    assert re.search(r"- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC; commit abc1234; source fingerprint [0-9a-f]{12}", md)
    assert doc["env"]["torch"] in md and f"CUDA {doc['env']['cuda']}" in md

    # each step measured what the GPU run measures, at tiny sizes
    assert steps["tests"]["data"]["files"] and steps["tests"]["data"]["skipped"] > 0  # collected, no GPU
    rows = steps["fused_heads"]["data"]["rows"]
    assert {(r["dtype"], r["B"], r["K"]) for r in rows} == {(d, b, k) for d in ("float32", "bfloat16")
                                                             for b, k in ((16, 2), (32, 4))}  # fmt: skip
    assert all({"eager", "compile", "reference", "fused"} <= set(r["ms"]) for r in rows)
    assert all(r["profile"]["fused"]["events"] > 0 and r["profile"]["eager"]["busy_ms"] > 0 for r in rows)
    pipelines = steps["input_pipeline"]["data"]["summary"]
    assert "naive fp32 NCHW (PIL + DataLoader)" in pipelines
    assert any("bf16" in n and "compiled" in n for n in pipelines) and any("compiled" not in n and "packed bf16" in n for n in pipelines)
    assert not steps["input_pipeline"]["data"]["failures"]
    worker = steps["worker_epoch"]["data"]
    assert worker["run"].startswith("adv-") and len(worker["epoch_seconds"]) == 1 and worker["projected_hours"] > 0

    targets = {t["key"]: t for t in doc["targets"]}
    assert set(targets) == {"fused_vs_eager", "fused_vs_compile", "train_vs_naive", "train_images_per_s",
                            "protocol_hours", "protocol_hours_worker"}  # fmt: skip
    assert all(t["value"] is not None for t in targets.values())
    for title in ("### Fused heads", "Profile, per step", "### Input pipeline", "### One AAL run through the worker"):
        assert title in md
    # the device tool brings back at most 8 plain files with plain names
    files = sorted(p.name for p in out.iterdir())
    assert files == ["campaign.json", "campaign.log", "campaign.md"]


def test_a_failing_step_is_recorded_and_the_next_step_still_runs(tmp_path):
    # a real failure of the tests step: pytest refuses an unknown option given through its env var
    env = dict(os.environ, PYTEST_ADDOPTS="--no-such-option")
    proc = run_campaign(tmp_path, "--only", "tests,fused_heads", env=env)
    assert proc.returncode == 1
    doc = json.loads((tmp_path / "campaign.json").read_text())
    status = {s["name"]: (s["status"], s["note"]) for s in doc["steps"]}
    assert status["tests"][0] == "failed" and "pytest exit 4" in status["tests"][1]
    assert status["fused_heads"][0] == "ok"
    assert [r for r in doc["steps"] if r["name"] == "fused_heads"][0]["data"]["rows"]
    assert "| tests | failed |" in (tmp_path / "campaign.md").read_text()
    assert "unrecognized arguments: --no-such-option" in (tmp_path / "campaign.log").read_text()


def test_a_step_past_its_limit_is_killed_together_with_the_processes_it_started(tmp_path):
    mod = load_campaign()
    args = types.SimpleNamespace(dry_run=True, out=str(tmp_path), work=str(tmp_path), budget=60, commit="",
                                 cap_scale=1.0, argv=[], only=[])  # fmt: skip
    camp = mod.Campaign(args)
    res = mod.StepResult("fused_heads")
    pid_file = tmp_path / "child.pid"
    t0 = time.monotonic()
    code = camp.run_cmd(res, ["bash", "-c", f"sleep 120 & echo $! > {pid_file}; wait"], limit=2)
    assert code is None and time.monotonic() - t0 < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # the grandchild got SIGTERM with its group; give the kernel a moment
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child process {child} outlived the step")


def test_a_step_with_too_little_budget_left_is_skipped_not_started(tmp_path):
    mod = load_campaign()
    assert mod.MIN_STEP_SECONDS > 10
    args = types.SimpleNamespace(dry_run=True, out=str(tmp_path), work=str(tmp_path), budget=10, commit="",
                                 cap_scale=1.0, argv=[], only=[])  # fmt: skip
    camp = mod.Campaign(args)
    started = []
    camp.step("tests", started.append)
    assert not started
    assert camp.results["tests"].status == "skipped" and "out of time" in camp.results["tests"].note
    assert "| tests | skipped |" in (tmp_path / "campaign.md").read_text()


def test_an_unknown_step_is_a_one_line_error_with_status_2(tmp_path):
    proc = run_campaign(tmp_path, "--only", "tests,nonsense")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "--only: unknown step(s) nonsense; steps: env, build, tests, fused_heads, worker_epoch, input_pipeline"
    )


def test_targets_are_judged_met_or_missed_from_the_measured_figures(tmp_path):
    mod = load_campaign()
    args = types.SimpleNamespace(dry_run=False, out=str(tmp_path), work=str(tmp_path), budget=60, commit="",
                                 cap_scale=1.0, argv=[], only=[])  # fmt: skip
    camp = mod.Campaign(args)
    ms = [{"eager": 0.35, "compile": 0.20, "compile-ro": 0.12, "fused": 0.1}, {"eager": 0.5, "compile": 0.3, "fused": 0.1}]
    camp.results["fused_heads"] = mod.StepResult("fused_heads", "ok", data={"rows": [
        {"device": "cuda", "dtype": "float32", "B": 256, "K": 2, "ms": ms[0]},
        {"device": "cuda", "dtype": "bfloat16", "B": 4096, "K": 40, "ms": ms[1]},
    ]})  # fmt: skip
    naive = "naive fp32 NCHW (PIL + DataLoader)"
    camp.results["input_pipeline"] = mod.StepResult("input_pipeline", "ok", data={"summary": {
        naive: {"best": {"train": 3000.0}, "train_vs_naive": 1.0, "projected_hours": 90.0},
        "packed bf16": {"best": {"train": 13_500.0}, "train_vs_naive": 4.5, "projected_hours": 21.5},
    }})  # fmt: skip
    camp.results["worker_epoch"] = mod.StepResult("worker_epoch", "ok", data={
        "projected_hours": 30.0, "fixed_hours": 2.0, "batch_size": 64})  # fmt: skip
    t = {x["key"]: x for x in camp.targets()}
    assert t["fused_vs_eager"]["value"] == pytest.approx(3.5) and t["fused_vs_eager"]["verdict"] == "met"
    # against the faster compile mode: 0.12 / 0.1
    assert t["fused_vs_compile"]["value"] == pytest.approx(1.2)
    assert t["fused_vs_compile"]["verdict"] == "missed (0.92x the target)"
    assert t["train_vs_naive"]["verdict"] == "met" and t["train_images_per_s"]["value"] == 13_500.0
    assert t["protocol_hours"]["verdict"] == "met"
    assert t["protocol_hours_worker"]["value"] == 32.0 and t["protocol_hours_worker"]["verdict"].startswith("missed")
    camp.write()
    assert "| fused head >= 1.3x torch.compile (the faster mode, worst case) | 1.20x (float32 B=256 K=2)" in (
        tmp_path / "campaign.md").read_text()  # fmt: skip


def test_recording_a_campaign_replaces_the_same_devices_earlier_record_and_keeps_the_others(tmp_path):
    mod = load_campaign()
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text(f"# Benchmarks\n\n## GPU campaign\n\n{mod.RECORD_BEGIN}\n{mod.RECORD_END}\n\n## Later section\n")

    def campaign(device, date):
        path = tmp_path / f"{device}-{date}.md"
        path.write_text(f"## GPU campaign: {device}\n\n- date: {date}\n\n### Fused heads\n\n| a |\n")
        return path

    mod.record(campaign("NVIDIA H200", "d1"), bench)
    mod.record(campaign("NVIDIA H100", "d2"), bench)
    mod.record(campaign("NVIDIA H200", "d3"), bench)
    text = bench.read_text()
    assert text.count("### GPU campaign: NVIDIA H200") == 1 and "- date: d3" in text and "- date: d1" not in text
    assert text.count("### GPU campaign: NVIDIA H100") == 1 and "- date: d2" in text
    assert text.count("#### Fused heads") == 2 and text.rstrip().endswith("## Later section")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--record", str(tmp_path / "missing.md")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "no such file" in proc.stderr.strip().splitlines()[-1]


def test_outside_a_dry_run_cuda_tests_that_skip_fail_the_tests_step(tmp_path):
    # on this CPU machine every cuda test skips, as they would on a GPU machine whose build failed
    mod = load_campaign()
    args = types.SimpleNamespace(dry_run=False, out=str(tmp_path), work=str(tmp_path), budget=300, commit="",
                                 cap_scale=1.0, argv=[], only=[])  # fmt: skip
    camp = mod.Campaign(args)
    camp.step("tests", camp.step_tests)
    res = camp.results["tests"]
    assert res.status == "failed" and res.note.startswith("cuda tests skipped on a GPU machine")
    assert res.data["skipped"] > 0 and res.data["passed"] == 0

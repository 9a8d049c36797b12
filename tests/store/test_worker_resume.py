"""Worker processes against the S3 server: SIGKILL mid-epoch then resume gives the metrics of an
uninterrupted run; two workers of one run commit exactly one result; no credentials in output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from s3_testing import SECRETS, FaultProxy, make_bucket, subprocess_env

from aal_k8s.config import load_config
from aal_k8s.planner import plan_stage
from aal_k8s.store import ExperimentStore, open_store

HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_hooks.py")


def _setup(s3_uri, tiny_overrides, experiment, epochs=3):
    over = [o for o in tiny_overrides if not o.startswith("store.uri=")]
    over += [f"store.uri={s3_uri}", f"experiment={experiment}", f"train.epochs={epochs}", "train.lr_decay_epoch=2"]
    cfg = load_config(overrides=over, dataset="synthetic")
    exp = ExperimentStore(open_store(s3_uri, cfg.store), experiment)
    spec = plan_stage("adversarial", cfg, {"square": "red_tint"})[0]
    exp.write_spec(spec)
    return exp, spec


def _worker_argv(exp, spec) -> list[str]:
    return ["worker", "--store", exp.store.uri, "--experiment", exp.experiment, "--run", spec.run_id]


def _run_worker(exp, spec, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aal_k8s", *_worker_argv(exp, spec)],
        env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _comparable(record: dict) -> dict:
    """What must be identical between an interrupted and an uninterrupted run."""
    return {
        "best_epoch": record["best_epoch"],
        "val_acc": record["val_acc"],
        "test_acc": record["test_acc"],
        "history": [{k: v for k, v in e.items() if k != "seconds"} for e in record["history"]],
        "weights_sha256": record["artifacts"]["best.safetensors"]["sha256"],
    }


def _no_secrets(text: str) -> None:
    for s in SECRETS:
        assert s not in text


def test_a_worker_killed_mid_epoch_resumes_and_ends_with_the_metrics_of_an_uninterrupted_run(
    s3_uri, tiny_overrides, tmp_path
):
    ref_exp, ref_spec = _setup(s3_uri, tiny_overrides, "reference")
    exp, spec = _setup(s3_uri, tiny_overrides, "interrupted")
    assert spec.run_id == ref_spec.run_id

    signal_file = tmp_path / "in-epoch-2"
    proc = subprocess.Popen(
        [sys.executable, HOOKS, "pause-mid-epoch", str(signal_file), "--", *_worker_argv(exp, spec)],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while not signal_file.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert signal_file.exists(), (
        f"worker never reached epoch 2: {proc.poll()} {proc.stdout.read() if proc.poll() is not None else ''}"
    )
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of epoch 2
    out1, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not exp.is_committed(spec.run_id)
    epoch, _, url = exp.latest_checkpoint(spec.run_id)
    assert epoch == 1 and "/checkpoints/epoch-0001.pt" in url

    resumed = _run_worker(exp, spec)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch 1 from {url}" in resumed.stderr
    assert "epoch 1 lr" not in resumed.stderr and "epoch 2 lr" in resumed.stderr  # epoch 1 not redone

    reference = _run_worker(ref_exp, ref_spec)
    assert reference.returncode == 0, reference.stderr
    assert "resuming" not in reference.stderr

    got, want = exp.read_metrics(spec.run_id), ref_exp.read_metrics(spec.run_id)
    assert got["environment"]["resumed_after_epoch"] == "1"
    assert _comparable(got) == _comparable(want)
    assert exp.read_artifact(spec.run_id, "best.safetensors") == ref_exp.read_artifact(spec.run_id, "best.safetensors")
    # once committed, no checkpoint of any attempt is left; the killed attempt's folder is empty
    assert not [k for k in exp.store.list(exp.key("runs", spec.run_id)) if "/checkpoints/" in k]
    for text in (out1, resumed.stdout, resumed.stderr, reference.stderr):
        _no_secrets(text)


def test_a_restarted_worker_skips_a_damaged_newest_checkpoint(s3_uri, tiny_overrides):
    exp, spec = _setup(s3_uri, tiny_overrides, "damaged", epochs=2)
    first = _run_worker(exp, spec)
    assert first.returncode == 0
    ref = exp.read_metrics(spec.run_id)
    # pretend the run was interrupted: drop the commit, plant checkpoints of two earlier attempts,
    # the newer one truncated (its record says otherwise)
    from aal_k8s.train import train_run

    states = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (train.threads=1)
    try:
        train_run(spec, _dataset(spec), on_checkpoint=lambda s: states.update({s["epoch"]: _bytes(s)}))
    finally:
        torch.set_num_threads(threads)
    exp.store.delete(exp.run_key(spec.run_id, "metrics.json"))
    old = ExperimentStore(exp.store, exp.experiment, attempt="old-pod")
    old.write_checkpoint(spec.run_id, 1, states[1])
    newer = ExperimentStore(exp.store, exp.experiment, attempt="newer-pod")
    newer.write_checkpoint(spec.run_id, 2, states[2])
    exp.store.put_bytes(newer.checkpoint_key(spec.run_id, 2), states[2][: len(states[2]) // 2])
    again = _run_worker(exp, spec)
    assert again.returncode == 0, again.stderr
    assert "skipping checkpoint" in again.stderr and "newer-pod/checkpoints/epoch-0002.json" in again.stderr
    assert "checksum mismatch" in again.stderr and "resuming after epoch 1" in again.stderr
    assert _comparable(exp.read_metrics(spec.run_id)) == _comparable(ref)


def _dataset(spec):
    from aal_k8s.config import config_from_dict
    from aal_k8s.data import load_dataset

    return load_dataset(config_from_dict(spec.config).dataset)


def _bytes(state) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_two_concurrent_workers_of_one_run_commit_exactly_one_result(s3_uri, tiny_overrides, tmp_path):
    exp, spec = _setup(s3_uri, tiny_overrides, "duplicate", epochs=2)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, HOOKS, "barrier-before-commit", str(barrier), "2", "--", *_worker_argv(exp, spec)],
            env=subprocess_env({"POD_NAME": f"job-pod-{i}"}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(os.listdir(barrier)) == 2  # both really reached the commit together
    record = exp.read_metrics(spec.run_id)
    winner = record["attempt"]
    assert winner.startswith("job-pod-")
    errs = [e for _, e in outs]
    assert sum(f"committed by attempt {winner}" in e for e in errs) == 1
    assert sum(f"attempt {winner} committed it first" in e for e in errs) == 1
    keys = exp.store.list(exp.key("runs", spec.run_id))
    logs = [k for k in keys if k.endswith("/worker.log")]  # each attempt's log (aal_k8s.worker.ATTEMPT_LOG)
    assert len(logs) == 2 and any(f"/{winner}/" in k for k in logs)
    events = [k for k in keys if "/tensorboard/events.out.tfevents" in k]  # aal_k8s.events: the winner's only
    assert len(events) == 1 and f"/{winner}/" in events[0]
    keys = [k for k in keys if k not in logs and k not in events]
    assert keys == sorted([
        exp.run_key(spec.run_id, "spec.json"),
        exp.run_key(spec.run_id, "metrics.json"),
        exp.attempt_key(spec.run_id, "best.safetensors", winner),
        exp.attempt_key(spec.run_id, "predictions.safetensors", winner),
    ])  # fmt: skip
    assert exp.read_artifact(spec.run_id, "best.safetensors")
    for o, e in outs:
        _no_secrets(o + e)


# -- create-only writes: the probe, the best-effort opt-in, a server without them ------------------
# A proxy that drops If-None-Match stands in for a server that ignores it. Only before moto: the
# header is signed, and SeaweedFS, which checks signatures, rightly refuses the altered request.
@pytest.fixture
def moto_proxy(aws_env, moto_endpoint):
    proxy = FaultProxy(moto_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture
def moto_uri(aws_env, moto_endpoint) -> str:
    return f"s3://{make_bucket(moto_endpoint)}/aal"


def _two_workers_at_the_commit(exp, spec, tmp_path, extra_env: dict):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, HOOKS, "barrier-before-commit", str(barrier), "2", "--", *_worker_argv(exp, spec)],
            env=subprocess_env({"POD_NAME": f"job-pod-{i}", **extra_env}),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    return [p.returncode for p in procs], [e for _, e in outs]


def test_behind_a_proxy_that_drops_if_none_match_two_workers_refuse_to_commit_in_one_line(
    moto_uri, tiny_overrides, tmp_path, moto_proxy
):
    fault_proxy = moto_proxy
    exp, spec = _setup(moto_uri, tiny_overrides, "stripped", epochs=1)
    fault_proxy.inject("strip", times=999, header="If-None-Match")
    codes, errs = _two_workers_at_the_commit(exp, spec, tmp_path, {"AWS_ENDPOINT_URL": fault_proxy.url})
    assert codes == [2, 2], errs
    for err in errs:
        last = err.strip().splitlines()[-1]
        assert "the server ignores If-None-Match: *" in last and "store.conditional_writes=best_effort" in last
        assert "committed" not in err and "Traceback" not in err
    assert not exp.is_committed(spec.run_id)


@pytest.mark.parametrize("server", ["drops If-None-Match, best effort accepted", "answers 501 to If-None-Match"])
def test_without_working_conditional_writes_two_workers_warn_once_and_leave_one_verified_record(
    server, moto_uri, tiny_overrides, tmp_path, moto_proxy
):
    fault_proxy = moto_proxy
    exp, spec = _setup(moto_uri, tiny_overrides, "best-effort", epochs=1)
    env = {"AWS_ENDPOINT_URL": fault_proxy.url}
    if server.startswith("drops"):
        fault_proxy.inject("strip", times=999, header="If-None-Match")
        env["AAL_K8S_STORE_OPTIONS"] = json.dumps({"conditional_writes": "best_effort"})
        said = "the server ignores If-None-Match: *"
    else:
        fault_proxy.inject("501", times=999, header="If-None-Match")
        said = "the server does not implement conditional writes (501 to If-None-Match)"
    codes, errs = _two_workers_at_the_commit(exp, spec, tmp_path, env)
    assert codes == [0, 0], errs
    for err in errs:
        assert err.count("store: warning:") == 1 and said in err and "check-then-put" in err
    record = exp.read_metrics(spec.run_id)  # one record, its own checksum verified ...
    assert record["attempt"].startswith("job-pod-")
    assert exp.read_artifact(spec.run_id, "best.safetensors")  # ... and the weights it names
    assert any(f"committed by attempt {record['attempt']}" in e for e in errs)

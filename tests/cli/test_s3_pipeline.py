"""End to end on each local S3 server (moto, SeaweedFS): the synthetic pipeline with ``--store s3://...`` gives exactly
what it gives with the local store; download then predict work on its final model set; the fake
credentials appear nowhere (output, worker logs, stored objects, reports).

Trains the whole (tiny) protocol twice in worker processes: about a minute on an idle 2-core box.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from s3_testing import (
    REPO,
    SECRETS,
    free_port,
    make_bucket,
    s3_environment,
    subprocess_env,
)

from aal_k8s.modelset import MANIFEST_SHA
from aal_k8s.reduce import SUMMARY_SHA

pytestmark = pytest.mark.slow


def _tiny() -> list[str]:
    spec = importlib.util.spec_from_file_location("_aal_root_conftest", os.path.join(REPO, "tests", "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [*mod.TINY, "adversarial.lambdas=[0.5]", "executor.parallel=2"]


SETTINGS = [x for o in _tiny() for x in ("--set", o)]


def _cli(args: list[str], env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aal_k8s", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=1200)  # fmt: skip


def _pipeline(name: str, store: str, env: dict, work) -> subprocess.CompletedProcess:
    r = _cli(["pipeline", "--store", store, "--output", str(work / f"{name}-report.md"), *SETTINGS], env, work)
    assert r.returncode == 0, f"{name} pipeline failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The pipeline once on a local folder (the reference every S3 server is compared with)."""
    work = tmp_path_factory.mktemp("local-pipeline")
    local = str(work / "local-store")
    return {"local": local, "local_work": work, "local_run": _pipeline("local", local, subprocess_env(), work)}


@pytest.fixture(scope="module")
def runs(s3_server, local_run, tmp_path_factory):
    """The pipeline once on the S3 server, the local-folder one, and everything they printed."""
    work = tmp_path_factory.mktemp(f"pipelines-{s3_server.name}")
    env = subprocess_env(s3_environment(s3_server.endpoint, str(work), s3_server.session_token))
    for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AAL_K8S_STORE_OPTIONS", "POD_NAME"):
        env.pop(k, None)
    if not s3_server.session_token:
        env.pop("AWS_SESSION_TOKEN", None)
    bucket = make_bucket(s3_server.endpoint)
    s3 = f"s3://{bucket}/team/aal"
    out = {"env": env, "work": work, "bucket": bucket, "s3": s3, **local_run, "outputs": []}
    out["s3_run"] = _pipeline("s3", s3, env, work)
    out["outputs"] += [out["s3_run"].stdout, out["s3_run"].stderr, local_run["local_run"].stdout,
                       local_run["local_run"].stderr]  # fmt: skip
    return out


def _open(uri: str, env: dict):
    from aal_k8s.config import StoreConfig
    from aal_k8s.store import ExperimentStore
    from aal_k8s.store.s3 import S3Store

    if uri.startswith("s3://"):
        return ExperimentStore(S3Store(uri, StoreConfig(endpoint_url=env["AWS_ENDPOINT_URL"])), "synthetic")
    from aal_k8s.store import LocalStore

    return ExperimentStore(LocalStore(uri), "synthetic")


def _committed(exp) -> dict[str, dict]:
    """Per committed run: what must not depend on the store (metrics, weights' sha256)."""
    out = {}
    for key in exp.store.list(exp.key("runs")):
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == "metrics.json":
            rec = exp.read_metrics(parts[2])
            out[parts[2]] = {
                "val_acc": rec["val_acc"],
                "test_acc": rec["test_acc"],
                "best_epoch": rec["best_epoch"],
                "history": [{k: v for k, v in e.items() if k != "seconds"} for e in rec["history"]],
                "weights": rec["artifacts"]["best.safetensors"]["sha256"],
            }
    return out


def _without_timings(report: str) -> str:
    """The report minus the sections that show run-seconds and the provenance paragraph with the
    commit times (wall clock differs between two runs)."""
    sections = report.split("\n## ")
    timed = ("Compute per stage", "Partner discovery")
    kept = "\n## ".join(s for s in sections if not s.startswith(timed))
    return "\n\n".join(p for p in kept.split("\n\n") if not p.startswith("**Provenance.**"))


def test_the_synthetic_pipeline_on_s3_gives_exactly_what_the_local_store_gives(runs, monkeypatch):
    for k, v in runs["env"].items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    s3, local = _open(runs["s3"], runs["env"]), _open(runs["local"], runs["env"])
    runs_s3, runs_local = _committed(s3), _committed(local)
    assert len(runs_s3) == 6 + 15 + 1 + len([k for k in runs_s3 if k.startswith("adv-")])
    assert runs_s3 == runs_local
    def timeless(summary: dict) -> dict:  # without wall-clock values: run-seconds, commit times
        prov = {k: v for k, v in summary["provenance"].items() if k not in ("first_commit", "last_commit")}
        # and without the seal, which covers those wall-clock values too
        return {**{k: v for k, v in summary.items() if k not in ("stage_seconds", SUMMARY_SHA)}, "provenance": prov}

    assert timeless(s3.get_json("reduce", "summary.json")) == timeless(local.get_json("reduce", "summary.json"))
    for name in ("pairwise_matrix.csv", "final.csv"):
        assert s3.store.get_bytes(s3.key("reduce", name)) == local.store.get_bytes(local.key("reduce", name))
    m_s3, m_local = s3.get_json("final", "manifest.json"), local.get_json("final", "manifest.json")
    for m in (m_s3, m_local):  # wall clock, and the seal that covers it
        m.pop("created_at"), m.pop(MANIFEST_SHA)
    assert m_s3 == m_local and len(m_s3["models"]) == 6
    for m in m_s3["models"]:
        assert s3.store.get_bytes(s3.key("final", m["file"])) == local.store.get_bytes(local.key("final", m["file"]))
    s3_md = s3.store.get_bytes(s3.key("report", "report.md")).decode()
    assert _without_timings(s3_md) == _without_timings(local.store.get_bytes(local.key("report", "report.md")).decode())
    assert s3_md == (runs["work"] / "s3-report.md").read_text()
    assert "## Compute per stage" in s3_md
    # the S3 layout: one attempt folder per run holding its weights, no checkpoints left after commit
    keys = s3.store.list(s3.key("runs"))
    assert not [k for k in keys if "/checkpoints/" in k]
    assert len([k for k in keys if k.endswith("/best.safetensors") and "/attempts/" in k]) == len(runs_s3)
    assert f"final model set: {runs['s3']}/synthetic/final/manifest.json" in runs["s3_run"].stdout


def test_download_then_predict_work_on_the_pipelines_final_model_set(runs):
    from PIL import Image

    from aal_k8s.config import load_config
    from aal_k8s.data import load_dataset

    env, work = runs["env"], runs["work"]
    split = load_dataset(load_config(overrides=_tiny(), dataset="synthetic").dataset).splits["test"]
    folder = work / "photos"
    folder.mkdir(exist_ok=True)
    for i in range(4):
        Image.fromarray(split.images[i].permute(1, 2, 0).numpy()).save(folder / f"p{i}.png")
    predictions = {}
    for name in ("s3", "local"):
        dest = work / f"models-{name}"
        d = _cli(["download", "--store", runs[name], "--to", str(dest), *SETTINGS], env, work)
        assert d.returncode == 0, d.stderr
        assert "6 classifiers in" in d.stdout
        again = _cli(["download", "--store", runs[name], "--to", str(dest), *SETTINGS], env, work)
        assert "(0 downloaded, 6 already there)" in again.stdout
        p = _cli(["predict", "--models", str(dest), "--format", "json", str(folder)], env, work)
        assert p.returncode == 0, p.stderr
        predictions[name] = json.loads(p.stdout)["predictions"]
        table = _cli(["predict", "--models", str(dest), str(folder)], env, work)
        assert table.returncode == 0 and table.stdout.splitlines()[0].split()[1:] == [
            "square", "ring", "h_stripes", "cross", "red_tint", "blue_tint"]  # fmt: skip
        runs["outputs"] += [d.stdout, d.stderr, again.stdout, p.stdout, p.stderr, table.stdout, table.stderr]
    assert predictions["s3"] == predictions["local"] and len(predictions["s3"]) == 4


def test_credentials_never_appear_in_output_logs_reports_or_the_store(runs, monkeypatch):
    env, work = runs["env"], runs["work"]
    texts = list(runs["outputs"])
    for args in (["status"], ["submit", "--stage", "single"], ["reduce"], ["report"]):
        r = _cli([*args, "--store", runs["s3"], *SETTINGS], env, work)
        assert r.returncode == 0, r.stderr
        texts += [r.stdout, r.stderr]
    # an error path: the endpoint is unreachable (retryable: exit 1), one line
    dead = _cli(["status", "--store", runs["s3"], "--set", f"store.endpoint_url=http://127.0.0.1:{free_port()}",
                 "--set", "store.max_attempts=2", *SETTINGS], env, work)  # fmt: skip
    assert dead.returncode == 1 and len(dead.stderr.strip().splitlines()) == 1 and "cannot reach" in dead.stderr
    texts += [dead.stdout, dead.stderr]
    # a worker on a run that does not exist
    w = _cli(["worker", "--store", runs["s3"], "--experiment", "synthetic", "--run", "sin-a01-00000000"], env, work)
    assert w.returncode == 2 and "no spec at" in w.stderr
    texts += [w.stdout, w.stderr]
    for k, v in env.items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    s3 = _open(runs["s3"], env)
    keys = s3.store.list("")
    assert any(k.endswith("/local.log") for k in keys)  # the workers' own output is stored too
    stored = {k: s3.store.get_bytes(k) for k in keys}
    files = [p for folder in (work, runs["local_work"]) for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 20
    for secret in SECRETS:
        for t in texts:
            assert secret not in t
        for k, data in stored.items():
            assert secret.encode() not in data, k
        for p in files:
            assert secret.encode() not in p.read_bytes(), p

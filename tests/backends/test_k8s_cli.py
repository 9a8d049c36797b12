"""The command line with ``--backend k8s``: dry-run manifests, submit/status/logs/cancel against the
in-memory API, no secret in any output, and the whole pipeline through the Backend interface."""

from __future__ import annotations

import json

import pytest
import yaml
from fake_k8s import NS, Fault, api_error
from k8s_schema import validate_strict

from aal_k8s.backends.k8s_manifests import job_name
from aal_k8s.cli import main
from aal_k8s.config import load_config
from aal_k8s.planner import plan_stage
from aal_k8s.store import ExperimentStore, open_store


def _sets(overrides) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def _jobs(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


def _commit(exp, spec) -> None:
    exp.commit_run(spec, {"best.safetensors": b"w"}, {"val_acc": {}, "test_acc": {}, "heads": spec.heads})


# -- --dry-run -----------------------------------------------------------------------------------
def test_dry_run_prints_valid_jobs_for_every_pair_and_writes_nothing(tmp_path, capsys):
    store = tmp_path / "store"
    argv = ["submit", "--stage", "pairwise", "--backend", "k8s", "--dry-run", "--store", str(store)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    jobs = _jobs(out)
    assert len(jobs) == 15 and out.startswith("# aal-k8s: 15 Jobs for stage pairwise")
    for job in jobs:
        validate_strict(job)
        assert job["metadata"]["namespace"] == NS and job["metadata"]["labels"]["aal-k8s/stage"] == "pairwise"
    assert len({j["metadata"]["name"] for j in jobs}) == 15
    assert "is not an s3:// store" in err  # a local store is unreachable from pods: said, not fatal
    assert not store.exists()


def test_dry_run_for_all_780_celeba_pairs_prints_780_valid_jobs(tmp_path, capsys):
    argv = ["submit", "--stage", "pairwise", "--dataset", "celeba", "--backend", "k8s", "--dry-run"]
    assert main([*argv, "--store", str(tmp_path / "store")]) == 0
    jobs = _jobs(capsys.readouterr().out)
    assert len(jobs) == 780 == len({j["metadata"]["name"] for j in jobs})
    for job in jobs:
        validate_strict(job, versions=("1.31",))
    validate_strict(jobs[0])  # and the newest schema


def test_dry_run_leaves_out_runs_complete_in_the_store(tmp_path, capsys):
    cfg = load_config(overrides=[f"store.uri={tmp_path}"], dataset="synthetic")
    exp = ExperimentStore(open_store(cfg.store.uri), cfg.experiment_name)
    done = plan_stage("pairwise", cfg)[3]
    _commit(exp, done)
    assert main(["submit", "--stage", "pairwise", "--backend", "k8s", "--dry-run", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    jobs = _jobs(out)
    assert len(jobs) == 14 and done.run_id not in out and "1 runs already complete" in out


# -- submit / status / logs / cancel -------------------------------------------------------------
def test_a_forbidden_create_is_one_line_naming_the_job_and_exit_2(cli_cluster, k8s_overrides, cfg, capsys):
    cli_cluster.faults["create_namespaced_job"] = [
        Fault(api_error(403, "Forbidden", 'jobs.batch is forbidden: User "alice" cannot create resource "jobs"'))
    ]
    assert main(["submit", "--stage", "single", *_sets(k8s_overrides)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    first = plan_stage("single", cfg)[0]
    assert err[-1] == (
        f"aal-k8s: error: {NS}/{job_name(first.experiment, first.run_id)}: create Job: 403 Forbidden: "
        'jobs.batch is forbidden: User "alice" cannot create resource "jobs"'
    )
    assert "Traceback" not in "\n".join(err) and cli_cluster.sleeps == []


def test_status_counts_runs_and_shows_pending_reasons_apart_and_failures(cli_cluster, k8s_overrides, cfg, exp, capsys):
    specs = plan_stage("single", cfg)
    assert main(["submit", "--stage", "single", *_sets(k8s_overrides)]) == 0
    names = [job_name(s.experiment, s.run_id) for s in specs]
    _commit(exp, specs[0])
    cli_cluster.complete(names[0])
    cli_cluster.add_pod(names[1], "Running")
    unsched = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    for n in names[2:4]:
        cli_cluster.add_pod(
            n,
            "Pending",
            conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unsched}],
        )
    pod = cli_cluster.add_pod(names[4], "Pending")
    cli_cluster.add_event(
        "Pod", pod["metadata"]["name"], "FailedScheduling", "0/4 nodes are available: 4 node(s) had untolerated taint."
    )
    cli_cluster.add_pod(
        names[5],
        "Failed",
        containerStatuses=[{"name": "worker", "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}],
    )
    cli_cluster.fail(
        names[5], "PodFailurePolicy", "Container worker failed with exit code 2 matching FailJob rule at index 1"
    )
    exp.record_failure(specs[5].run_id, "dataset 'synthetic' has no attribute(s) ['blue_tint']", 2)
    capsys.readouterr()
    assert main(["status", "--stage", "single", *_sets(k8s_overrides)]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.startswith(("stage", "single"))}
    assert dict(zip(rows["stage"], map(int, rows["single"]))) == {
        "complete": 1, "running": 1, "pending": 3, "failed": 1, "not_submitted": 0, "stopped": 0,
    }  # fmt: skip
    assert f"  single 2 runs: Unschedulable: {unsched} [" in out
    assert "  single 1 runs: FailedScheduling: 0/4 nodes are available: 4 node(s) had untolerated taint." in out
    assert "failed runs:" in out
    [line] = [ln for ln in out.splitlines() if specs[5].run_id in ln and "PodFailurePolicy" in ln]
    assert "last pod exit 2 (Error)" in line and "no attribute(s) ['blue_tint']" in line


def test_logs_prints_the_pod_log_and_the_local_backend_prints_its_stored_log(
    cli_cluster, k8s_overrides, cfg, exp, capsys
):
    [spec] = plan_stage("single", cfg, attributes=["square"])
    assert main(["submit", "--stage", "single", "--attrs", "square", *_sets(k8s_overrides)]) == 0
    pod = cli_cluster.add_pod(job_name(spec.experiment, spec.run_id), "Running")
    cli_cluster.logs[pod["metadata"]["name"]] = "run sin-a01: epoch 1 lr=0.002\n"
    capsys.readouterr()
    assert main(["logs", spec.run_id, *_sets(k8s_overrides)]) == 0
    assert capsys.readouterr().out == "run sin-a01: epoch 1 lr=0.002\n"
    exp.store.put_bytes(exp.run_key(spec.run_id, "local.log"), b"local worker output\n")
    assert main(["logs", spec.run_id, *_sets(k8s_overrides), "--backend", "local"]) == 0
    assert capsys.readouterr().out == "local worker output\n"


def test_cancel_deletes_the_stages_jobs(cli_cluster, k8s_overrides, capsys):
    assert main(["submit", "--stage", "single", *_sets(k8s_overrides)]) == 0
    assert main(["submit", "--stage", "pairwise", *_sets(k8s_overrides)]) == 0
    capsys.readouterr()
    assert main(["cancel", "--stage", "single", *_sets(k8s_overrides)]) == 0
    assert "stage single: 6 runs cancelled (k8s backend)" in capsys.readouterr().out
    assert len(cli_cluster.jobs) == 15 and all(
        j["metadata"]["labels"]["aal-k8s/stage"] == "pairwise" for j in cli_cluster.jobs.values()
    )
    assert {d["propagation_policy"] for d in cli_cluster.calls_to("delete_namespaced_job")} == {"Background"}


# -- secrets -------------------------------------------------------------------------------------
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEYID7777777",
    "AWS_SECRET_ACCESS_KEY": "fAkE/SeCrEt+KeY/7777777777777777777777777",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEFAKESESSIONTOKEN7777",
}


def test_no_secret_value_appears_in_any_manifest_or_log_line(
    cli_cluster, k8s_overrides, cfg, monkeypatch, capsys, caplog
):
    caplog.set_level("DEBUG")
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    sets = _sets([*k8s_overrides, "k8s.env={LOG_LEVEL: debug}"])
    outputs = []
    assert main(["submit", "--stage", "single", "--backend", "k8s", "--dry-run", *sets]) == 0
    outputs.append(capsys.readouterr())
    cli_cluster.faults["create_namespaced_job"] = [
        Fault(api_error(429, "TooManyRequests", "storage is (re)initializing", {"Retry-After": "1"})),
        Fault(api_error(500, "InternalError", "etcd timeout"), applied=True),
    ]
    assert main(["submit", "--stage", "single", *sets]) == 0
    outputs.append(capsys.readouterr())
    cli_cluster.faults["create_namespaced_job"] = [
        Fault(api_error(422, "Invalid", 'Job.batch "x" is invalid: spec.template'))
    ]
    assert main(["submit", "--stage", "pairwise", *sets]) == 2
    outputs.append(capsys.readouterr())
    pod = cli_cluster.add_pod(next(iter(cli_cluster.jobs)), "Pending")
    cli_cluster.logs[pod["metadata"]["name"]] = "starting\n"
    for argv in (["status"], ["logs", plan_stage("single", cfg)[0].run_id], ["cancel", "--stage", "single"]):
        assert main([*argv, *sets]) == 0
        outputs.append(capsys.readouterr())
    text = "\n".join(o.out + o.err for o in outputs) + caplog.text
    text += json.dumps([kw.get("body") for m, kw in cli_cluster.calls if m == "create_namespaced_job"])
    assert "retry 1/5 in 1s" in text and "0 Jobs created" not in outputs[1].err  # the run did what it should
    for name, value in SECRETS.items():
        assert value not in text, f"{name} leaked"


# -- the pipeline --------------------------------------------------------------------------------
class Kubelet:
    """Runs every new Job's container args in this process (the real worker, tiny config) when the
    backend starts watching, then marks the Job Complete or Failed as the Job controller would."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.ran: list[str] = []

    def __call__(self, n: int) -> None:
        for name, job in list(self.cluster.jobs.items()):
            if job.get("status", {}).get("conditions"):
                continue
            [c] = job["spec"]["template"]["spec"]["containers"]
            assert c["command"] == ["aal-k8s"] and c["args"][0] == "worker"
            code = main(c["args"])
            self.ran.append(name)
            self.cluster.complete(name) if code == 0 else self.cluster.fail(
                name, "BackoffLimitExceeded", f"exit {code}"
            )


@pytest.mark.slow
def test_the_pipeline_runs_every_stage_as_jobs_and_ends_with_the_final_models(
    cli_cluster, tiny_overrides, tmp_path, capsys
):
    kubelet = Kubelet(cli_cluster)
    cli_cluster.on_watch = kubelet
    sets = _sets([*tiny_overrides, "train.epochs=1", "adversarial.lambdas=[0.5]", "executor.backend=k8s",
                  "k8s.image=registry.example/aal-k8s:test", "k8s.store_volume_claim=aal-store"])
    report = tmp_path / "report.md"
    assert main(["pipeline", "--dataset", "synthetic", *sets, "--output", str(report)]) == 0
    out = capsys.readouterr().out
    stages = [j["metadata"]["labels"]["aal-k8s/stage"] for j in cli_cluster.jobs.values()]
    assert stages.count("single") == 6 and stages.count("pairwise") == 15 and stages.count("multi") == 1
    assert stages.count("adversarial") >= 1 and len(kubelet.ran) == len(stages)
    assert report.exists() and "final model set:" in out
    store = tmp_path / "store" / "synthetic"
    manifest = json.loads((store / "final" / "manifest.json").read_text())
    assert len(manifest["models"]) == 6
    ran = len(kubelet.ran)
    assert main(["pipeline", "--dataset", "synthetic", *sets, "--output", str(report)]) == 0  # again: nothing to do
    assert len(kubelet.ran) == ran and len(cli_cluster.calls_to("create_namespaced_job")) == ran


def test_the_pipeline_stops_on_a_run_that_fails_in_the_cluster(cli_cluster, k8s_overrides, capsys):
    def fail_all(n):
        for name, job in list(cli_cluster.jobs.items()):
            if not job.get("status", {}).get("conditions"):
                cli_cluster.fail(name, "DeadlineExceeded", "Job was active longer than specified deadline")

    cli_cluster.on_watch = fail_all
    assert main(["pipeline", "--yes", "--dataset", "synthetic", *_sets(k8s_overrides)]) == 1
    err = capsys.readouterr().err
    assert "failed: DeadlineExceeded: Job was active longer than specified deadline" in err
    assert "pipeline stopped: stage single has failed runs" in err
    assert {j["metadata"]["labels"]["aal-k8s/stage"] for j in cli_cluster.jobs.values()} == {"single"}

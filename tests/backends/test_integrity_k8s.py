"""Issue 19: exit codes that mean what they say. An API server that stays unreachable past every
retry is worth retrying later (exit 1); a refusal such as 403 is bad input (exit 2)."""

from __future__ import annotations

from fake_k8s import Fault, api_error

from aal_k8s.cli import main


def _sets(overrides) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def test_an_api_server_unreachable_past_every_retry_exits_1_on_one_line(cli_cluster, k8s_overrides, capsys):
    refused = [Fault(ConnectionRefusedError(111, "Connection refused")) for _ in range(20)]
    cli_cluster.faults["list_namespaced_job"] = refused
    assert main(["submit", "--stage", "single", *_sets(k8s_overrides), "--set", "k8s.api_max_attempts=3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "(gave up after 3 attempts)" in err[-1] and "Traceback" not in "\n".join(err)


def test_an_overloaded_api_server_past_every_retry_exits_1(cli_cluster, k8s_overrides, capsys):
    cli_cluster.faults["create_namespaced_job"] = [Fault(api_error(503, "ServiceUnavailable", "later")) for _ in range(9)]
    assert main(["submit", "--stage", "single", *_sets(k8s_overrides), "--set", "k8s.api_max_attempts=3"]) == 1


def test_a_refused_request_stays_exit_2(cli_cluster, k8s_overrides, capsys):
    cli_cluster.faults["create_namespaced_job"] = [Fault(api_error(422, "Invalid", "spec.template: invalid"))]
    assert main(["submit", "--stage", "single", *_sets(k8s_overrides)]) == 2


def test_submit_retrains_now_a_run_whose_truncated_record_it_moves_aside_though_its_job_succeeded(
    cli_cluster, k8s_overrides, cfg, exp, capsys
):
    from aal_k8s.backends.k8s_manifests import job_name
    from aal_k8s.planner import plan_stage

    argv = ["submit", "--stage", "single", *_sets(k8s_overrides)]
    assert main(argv) == 0
    spec = plan_stage("single", cfg)[0]
    exp.commit_run(spec, {"best.safetensors": b"weights"}, {"val_acc": {}, "test_acc": {}, "heads": spec.heads})
    name = job_name(spec.experiment, spec.run_id)
    cli_cluster.complete(name)  # succeeded; its TTL would keep it for days
    key = exp.run_key(spec.run_id, "metrics.json")
    exp.store.put_bytes(key, exp.store.get_bytes(key)[:40])  # truncated after the commit
    assert main(["plan", "--stage", "single", *_sets(k8s_overrides)]) == 0  # the plan reads records verified
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"run {spec.run_id}: " in err and "the run is trained again" in err
    assert f"{cli_cluster.ns}/{name}: succeeded but run {spec.run_id} is not committed" in err
    assert cli_cluster.job(name)["status"] == {} and len(cli_cluster.calls_to("create_namespaced_job")) == 7

"""Each worker attempt copies its log to the store, so `aal-k8s logs` works after the Job is gone."""

import json

import pytest

from aal_k8s.planner import plan_stage
from aal_k8s.worker import ATTEMPT_LOG, execute


def test_a_failed_attempt_leaves_its_log_in_the_store_and_logs_prints_it_once_the_job_is_gone(
    backend, cluster, cfg, exp, capsys, monkeypatch
):
    spec = plan_stage("single", cfg)[0]
    exp.write_spec(spec)
    key = exp.run_key(spec.run_id, "spec.json")
    altered = json.loads(exp.store.get_bytes(key))
    altered["lam"] = 0.5  # the stored spec no longer hashes to its id: the attempt fails at once
    exp.store.put_bytes(key, json.dumps(altered).encode())
    monkeypatch.setenv("AAL_K8S_ATTEMPT", "pod-1")
    assert execute(exp.store.root, exp.experiment, spec.run_id) == 2
    capsys.readouterr()
    [log] = [k for k in exp.store.list(exp.key("runs", spec.run_id)) if k.endswith(ATTEMPT_LOG)]
    assert "/attempts/pod-1-" in log
    assert not cluster.jobs and not cluster.pods  # the Job's TTL removed it (or it never existed here)
    backend.logs(spec.run_id, exp)
    out = capsys.readouterr().out
    assert out.startswith(f"== {exp.store.url(log)}\n")
    assert f"run {spec.run_id}: failed: run {spec.run_id}: stored spec hashes to" in out


def test_logs_print_the_stored_copies_when_the_kubelet_cannot_serve_the_pod_log(
    backend, cluster, cfg, exp, capsys, monkeypatch
):
    # what the k8s-testbed shows (no kubelet log server), and a real cluster once a finished pod's
    # node is gone: pods/log answers 500 on every try, but the attempt copied its log to the store
    from fake_k8s import Fault, api_error

    from aal_k8s.backends.k8s import KubernetesError
    from aal_k8s.backends.k8s_manifests import job_name

    spec = plan_stage("single", cfg)[0]
    backend.submit([spec], exp)
    pod = cluster.add_pod(job_name(exp.experiment, spec.run_id), "Succeeded", suffix="aaaaa")
    refused = 'Get "https://10.0.0.7:10250/containerLogs/...": dial tcp 10.0.0.7:10250: connect: connection refused'
    cluster.faults["read_namespaced_pod_log"] = [Fault(api_error(500, "InternalError", refused)) for _ in range(6)]
    with pytest.raises(KubernetesError, match="read log"):  # no copy in the store yet: the API's error
        backend.logs(spec.run_id, exp)
    key = exp.key("runs", spec.run_id, "attempts", pod["metadata"]["name"], ATTEMPT_LOG)
    exp.store.put_bytes(key, b"epoch 1/1 done\n")
    cluster.faults["read_namespaced_pod_log"] = [Fault(api_error(500, "InternalError", refused)) for _ in range(6)]
    capsys.readouterr()
    backend.logs(spec.run_id, exp)
    assert capsys.readouterr().out == f"== {exp.store.url(key)}\nepoch 1/1 done\n"

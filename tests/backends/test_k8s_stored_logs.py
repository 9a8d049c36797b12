"""Each worker attempt copies its log to the store, so `aal-k8s logs` works after the Job is gone."""

import json

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

"""The Kubernetes backend's controller logic against an in-memory API (no cluster)."""

from __future__ import annotations

import pytest
import urllib3
from fake_k8s import NS, Fault, api_error

from aal_k8s.backends.k8s import KubernetesError
from aal_k8s.backends.k8s_manifests import job_name
from aal_k8s.planner import plan_stage


def _single(cfg, *attrs):
    return plan_stage("single", cfg, attributes=list(attrs) or None)


def _name(spec) -> str:
    return job_name(spec.experiment, spec.run_id)


def _commit(exp, spec) -> None:
    exp.commit_run(spec, {"best.safetensors": b"weights"}, {"val_acc": {}, "test_acc": {}, "heads": spec.heads})


# -- submit ------------------------------------------------------------------------------------
def test_each_spec_is_in_the_store_before_its_job_exists(backend, cluster, cfg, exp):
    specs = {_name(s): s for s in _single(cfg)}

    def check(body):
        spec = specs[body["metadata"]["name"]]
        assert exp.read_spec(spec.run_id) == spec

    cluster.on_create = check
    backend.submit(list(specs.values()), exp)
    assert len(cluster.jobs) == 6


def test_runs_committed_in_the_store_get_no_job(backend, cluster, cfg, exp):
    specs = _single(cfg)
    _commit(exp, specs[0])
    report = backend.submit(specs, exp)
    assert report.skipped == [specs[0].run_id]
    assert _name(specs[0]) not in cluster.jobs and len(cluster.jobs) == 5


def test_a_create_answered_500_then_409_counts_as_submitted_once(backend, cluster, cfg, exp, rec):
    [spec] = _single(cfg, "square")
    cluster.faults["create_namespaced_job"] = [
        Fault(api_error(500, "InternalError", "etcdserver: request timed out"), applied=True)
    ]
    report = backend.submit([spec], exp)
    assert report.submitted == [spec.run_id] and not report.failed
    assert len(cluster.calls_to("create_namespaced_job")) == 2  # the retry met AlreadyExists
    assert list(cluster.jobs) == [_name(spec)]
    assert rec.sleeps == [1.0]
    assert "0 Jobs created" in rec.log.getvalue() and "1 already there" in rec.log.getvalue()


def _proto() -> Exception:
    return urllib3.exceptions.ProtocolError(
        "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")
    )


RETRIED = [
    ("429 Retry-After seconds, then 429 without it", [api_error(429, "TooManyRequests", "slow down", {"Retry-After": "3"}),
                                                      api_error(429, "TooManyRequests", "slow down")], [3.0, 2.0]),
    ("429 Retry-After as an HTTP date", [api_error(429, "TooManyRequests", "", {"Retry-After": "Sun, 15 Jun 2025 15:07:00 GMT"})], [20.0]),
    ("429 Retry-After above the cap", [api_error(429, "TooManyRequests", "", {"Retry-After": "600"})], [60.0]),
    ("5xx backs off exponentially", [api_error(503, "ServiceUnavailable"), api_error(502, "BadGateway"),
                                     api_error(500, "InternalError")], [1.0, 2.0, 4.0]),
    ("connection errors are retried", [_proto(), ConnectionRefusedError(111, "Connection refused")], [1.0, 2.0]),
]  # fmt: skip


@pytest.mark.parametrize("faults, sleeps", [r[1:] for r in RETRIED], ids=[r[0] for r in RETRIED])
def test_retryable_errors_sleep_exactly_the_backoff_sequence_then_succeed(
    backend, cluster, cfg, exp, rec, faults, sleeps
):
    [spec] = _single(cfg, "ring")
    cluster.faults["create_namespaced_job"] = [Fault(e) for e in faults]
    report = backend.submit([spec], exp)
    assert report.submitted == [spec.run_id]
    assert rec.sleeps == sleeps
    assert len(cluster.calls_to("create_namespaced_job")) == len(faults) + 1 and len(cluster.jobs) == 1


def test_retries_are_bounded_in_number_and_delay(make_backend, k8s_overrides, cluster, rec):
    from aal_k8s.config import load_config
    from aal_k8s.store import ExperimentStore, open_store

    cfg = load_config(
        overrides=[*k8s_overrides, "k8s.api_backoff_max_seconds=5", "k8s.api_max_attempts=5"], dataset="synthetic"
    )
    exp = ExperimentStore(open_store(cfg.store.uri), cfg.experiment_name)
    [spec] = _single(cfg, "cross")
    cluster.faults["create_namespaced_job"] = [
        Fault(api_error(503, "ServiceUnavailable", "try later")) for _ in range(9)
    ]
    with pytest.raises(KubernetesError) as e:
        make_backend(cfg).submit([spec], exp)
    assert rec.sleeps == [1.0, 2.0, 4.0, 5.0]
    assert len(cluster.calls_to("create_namespaced_job")) == 5
    assert (
        str(e.value) == f"{NS}/{_name(spec)}: create Job: 503 ServiceUnavailable: try later (gave up after 5 attempts)"
    )


NOT_RETRIED = [
    (
        403,
        "Forbidden",
        'jobs.batch is forbidden: User "system:serviceaccount:aal-k8s:default" cannot create resource "jobs"',
    ),
    (422, "Unprocessable Entity", 'Job.batch "x" is invalid: spec.template.spec.containers[0].image: Required value'),
    (400, "BadRequest", "the server rejected our request"),
    (404, "NotFound", 'namespaces "aal-k8s" not found'),
]


@pytest.mark.parametrize("status, reason, message", NOT_RETRIED, ids=[str(r[0]) for r in NOT_RETRIED])
def test_other_4xx_fail_at_once_with_one_line_naming_namespace_and_job(
    backend, cluster, cfg, exp, rec, status, reason, message
):
    [spec] = _single(cfg, "square")
    cluster.faults["create_namespaced_job"] = [Fault(api_error(status, reason, message))]
    with pytest.raises(KubernetesError) as e:
        backend.submit([spec], exp)
    assert str(e.value) == f"{NS}/{_name(spec)}: create Job: {status} {reason}: {message}"
    assert e.value.status == status and "\n" not in str(e.value)
    assert rec.sleeps == [] and len(cluster.calls_to("create_namespaced_job")) == 1 and not cluster.jobs


def test_an_error_midway_says_how_many_jobs_exist_already(backend, cluster, cfg, exp):
    specs = _single(cfg)
    cluster.faults["create_namespaced_job"] = [None, None, Fault(api_error(403, "Forbidden", "quota"))]
    with pytest.raises(KubernetesError, match=r"403 Forbidden: quota \(2 Jobs were created before this error"):
        backend.submit(specs, exp)
    assert len(cluster.jobs) == 2


def test_an_existing_failed_job_is_reported_with_the_way_to_retry_it(backend, cluster, cfg, exp):
    [spec] = _single(cfg, "square")
    backend.submit([spec], exp)
    cluster.fail(_name(spec))
    report = backend.submit([spec], exp)
    assert "BackoffLimitExceeded" in report.failed[spec.run_id]
    assert "aal-k8s cancel --stage single" in report.failed[spec.run_id]
    assert len(cluster.calls_to("create_namespaced_job")) == 1


def _quarantined_after_success(backend, cluster, exp, spec) -> None:
    """The run's Job succeeded and committed, then its record was truncated and moved aside (what
    ``submit``'s stage step does with a record that fails verification): the Job is still there."""
    backend.submit([spec], exp)
    _commit(exp, spec)
    cluster.complete(_name(spec))
    key = exp.run_key(spec.run_id, "metrics.json")
    exp.store.put_bytes(key, exp.store.get_bytes(key)[:40])
    assert exp.quarantine_record(spec.run_id) is not None and not exp.is_committed(spec.run_id)


def test_a_succeeded_job_whose_run_is_not_committed_is_deleted_and_created_anew(backend, cluster, cfg, exp, rec):
    [spec] = _single(cfg, "square")
    _quarantined_after_success(backend, cluster, exp, spec)
    report = backend.submit([spec], exp)
    assert report.submitted == [spec.run_id] and not report.failed and not report.skipped
    [delete] = cluster.calls_to("delete_namespaced_job")
    assert delete["name"] == _name(spec) and delete["propagation_policy"] == "Background"
    assert len(cluster.calls_to("create_namespaced_job")) == 2
    assert cluster.job(_name(spec))["status"] == {}  # a new Job, not the succeeded one
    log = rec.log.getvalue()
    assert f"{NS}/{_name(spec)}: succeeded but run {spec.run_id} is not committed" in log
    assert "1 Jobs created in namespace aal-k8s (1 of them replacing a stale Job), 0 already there" in log


def test_a_succeeded_job_whose_run_committed_meanwhile_is_left_alone(backend, cluster, cfg, exp, monkeypatch):
    [spec] = _single(cfg, "square")
    backend.submit([spec], exp)
    _commit(exp, spec)
    cluster.complete(_name(spec))
    monkeypatch.setattr(backend, "_committed", lambda exp, specs: set())  # read before the worker committed
    report = backend.submit([spec], exp)
    assert report.skipped == [spec.run_id] and not report.submitted
    assert not cluster.calls_to("delete_namespaced_job") and len(cluster.calls_to("create_namespaced_job")) == 1


def test_a_refused_delete_of_a_stale_job_is_one_line_naming_namespace_and_job(backend, cluster, cfg, exp):
    [spec] = _single(cfg, "square")
    _quarantined_after_success(backend, cluster, exp, spec)
    cluster.faults["delete_namespaced_job"] = [Fault(api_error(403, "Forbidden", "cannot delete resource jobs"))]
    with pytest.raises(KubernetesError) as e:
        backend.submit([spec], exp)
    assert str(e.value) == f"{NS}/{_name(spec)}: delete stale Job: 403 Forbidden: cannot delete resource jobs"
    assert len(cluster.calls_to("create_namespaced_job")) == 1  # nothing created after the refusal


def test_a_stale_job_already_gone_is_created_anew(backend, cluster, cfg, exp):
    [spec] = _single(cfg, "square")
    _quarantined_after_success(backend, cluster, exp, spec)
    cluster.faults["delete_namespaced_job"] = [Fault(api_error(404, "NotFound", "gone"))]  # its TTL got there first
    assert backend.submit([spec], exp).submitted == [spec.run_id]
    assert len(cluster.calls_to("create_namespaced_job")) == 2


def test_a_stale_job_still_terminating_is_reported_naming_namespace_and_job(backend, cluster, cfg, exp):
    [spec] = _single(cfg, "square")
    _quarantined_after_success(backend, cluster, exp, spec)

    def held_by_a_finalizer(name, namespace, propagation_policy=None, **kwargs):
        cluster.calls.append(("delete_namespaced_job", {"name": name}))
        cluster.jobs[name]["metadata"]["deletionTimestamp"] = "2025-01-01T00:01:00Z"

    cluster.batch.delete_namespaced_job = held_by_a_finalizer
    report = backend.submit([spec], exp)
    assert report.failed[spec.run_id].startswith(f"its stale Job {NS}/{_name(spec)} (succeeded, run not committed)")
    assert "submit again in a moment" in report.failed[spec.run_id]


# -- wait --------------------------------------------------------------------------------------
@pytest.mark.parametrize("gone_as", ["raise", "event"])
def test_a_watch_answering_410_re_lists_and_loses_no_completion(backend, cluster, cfg, exp, gone_as):
    a, b, c = _single(cfg, "square", "ring", "cross")
    backend.submit([a, b, c], exp)
    lists_before = len(cluster.calls_to("list_namespaced_job"))
    cluster.gone_as = gone_as

    def on_watch(n):
        if n == 1:  # a and b finish, then their events are compacted away: only a list shows them
            for s in (a, b):
                _commit(exp, s)
                cluster.complete(_name(s))
            cluster.compact()
        else:
            _commit(exp, c)
            cluster.complete(_name(c))

    cluster.on_watch = on_watch
    final = backend.wait([a, b, c], exp)
    assert {r: s.state for r, s in final.items()} == {s.run_id: "complete" for s in (a, b, c)}
    lists = cluster.calls_to("list_namespaced_job")[lists_before:]
    watches = cluster.calls_to("watch")
    assert len(watches) == 2 and len(lists) == 2  # the first list and the re-list after 410
    assert int(watches[1]["resource_version"]) > int(watches[0]["resource_version"])


def test_a_dropped_watch_reconnects_from_the_last_resource_version(backend, cluster, cfg, exp, rec):
    a, b = _single(cfg, "square", "ring")
    backend.submit([a, b], exp)
    seen = {}

    def on_watch(n):
        if n == 1:
            _commit(exp, a)
            cluster.complete(_name(a))
            seen["rv"] = str(cluster.rv)
            return ("drop", _proto())
        _commit(exp, b)
        cluster.complete(_name(b))

    cluster.on_watch = on_watch
    lists_before = len(cluster.calls_to("list_namespaced_job"))
    final = backend.wait([a, b], exp)
    assert all(s.state == "complete" for s in final.values())
    watches = cluster.calls_to("watch")
    assert [w["resource_version"] for w in watches][1] == seen["rv"]
    assert rec.sleeps == [1.0]
    assert len(cluster.calls_to("list_namespaced_job")) - lists_before == 1  # a reconnect, not a re-list


@pytest.mark.parametrize("code, reconnects", [(500, True), (403, False)])
def test_an_error_event_in_a_watch_reconnects_on_5xx_and_fails_on_other_codes(
    backend, cluster, cfg, exp, rec, code, reconnects
):
    [a] = _single(cfg, "square")
    backend.submit([a], exp)

    def on_watch(n):
        if n == 1:
            return ("error_event", code)
        _commit(exp, a)
        cluster.complete(_name(a))

    cluster.on_watch = on_watch
    if reconnects:
        assert backend.wait([a], exp)[a.run_id].state == "complete"
        assert rec.sleeps == [1.0] and len(cluster.calls_to("watch")) == 2
    else:
        with pytest.raises(KubernetesError, match=f"^{NS}/jobs of experiment synthetic, stage single: watch: 403 "):
            backend.wait([a], exp)


def test_a_job_deleted_during_wait_fails_the_run_unless_it_committed(backend, cluster, cfg, exp):
    a, b = _single(cfg, "square", "ring")
    backend.submit([a, b], exp)

    def on_watch(n):
        _commit(exp, a)
        cluster.batch.delete_namespaced_job(_name(a), NS)  # e.g. collected by its TTL right away
        cluster.batch.delete_namespaced_job(_name(b), NS)  # cancelled

    cluster.on_watch = on_watch
    final = backend.wait([a, b], exp)
    assert final[a.run_id].state == "complete"
    assert final[b.run_id].state == "failed" and "deleted" in final[b.run_id].reason


def test_a_job_complete_without_a_commit_is_a_failure_not_a_completion(backend, cluster, cfg, exp):
    [a] = _single(cfg, "square")
    backend.submit([a], exp)
    cluster.on_watch = lambda n: cluster.complete(_name(a))
    final = backend.wait([a], exp)
    assert final[a.run_id].state == "failed" and "succeeded but" in final[a.run_id].reason


# -- states ------------------------------------------------------------------------------------
MOUNT = (
    'MountVolume.SetUp failed for volume "cache" : hostPath type check failed: /var/cache/aal-k8s is not a directory'
)
UNSCHED = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."


def _unschedulable(cluster, exp, spec):
    cluster.add_pod(_name(spec), "Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": UNSCHED}])  # fmt: skip


def _failed_scheduling_event(cluster, exp, spec):
    pod = cluster.add_pod(_name(spec), "Pending")
    cluster.add_event(
        "Pod",
        pod["metadata"]["name"],
        "FailedScheduling",
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
    )


def _image_pull(cluster, exp, spec):
    cluster.add_pod(_name(spec), "Pending", conditions=[{"type": "PodScheduled", "status": "True"}], containerStatuses=[
        {"name": "worker", "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.example/aal-k8s:test"'}}}])  # fmt: skip


def _failed_mount(cluster, exp, spec):
    pod = cluster.add_pod(_name(spec), "Pending", conditions=[{"type": "PodScheduled", "status": "True"}], containerStatuses=[
        {"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}])  # fmt: skip
    cluster.add_event("Pod", pod["metadata"]["name"], "FailedMount", MOUNT)


def _failed_create(cluster, exp, spec):
    cluster.add_event(
        "Job", _name(spec), "FailedCreate", 'Error creating: pods "x" is forbidden: exceeded quota: gpu-quota'
    )


def _suspended(cluster, exp, spec):
    job = cluster.job(_name(spec))
    job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "gpu"
    cluster.set_job_status(_name(spec), {}, spec={"suspend": True})


def _running(cluster, exp, spec):
    cluster.add_pod(_name(spec), "Failed", suffix="old01", created="2025-01-01T00:00:00Z")
    cluster.add_pod(_name(spec), "Running", suffix="new02", created="2025-01-01T01:00:00Z")


def _retrying(cluster, exp, spec):
    cluster.add_pod(_name(spec), "Failed", containerStatuses=[
        {"name": "worker", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])  # fmt: skip


def _crashed_with_message(cluster, exp, spec):
    cluster.add_pod(_name(spec), "Failed", containerStatuses=[{"name": "worker", "state": {"terminated": {
        "exitCode": 1, "reason": "Error", "message": "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error: out of memory\n"}}}])  # fmt: skip
    cluster.fail(_name(spec))


def _oom_failed(cluster, exp, spec):
    _retrying(cluster, exp, spec)
    cluster.fail(_name(spec))


def _committed_but_job_failed(cluster, exp, spec):
    cluster.fail(_name(spec))
    _commit(exp, spec)


def _job_gone_failure_recorded(cluster, exp, spec):
    cluster.batch.delete_namespaced_job(_name(spec), NS)
    exp.record_failure(spec.run_id, "CUDA error: an illegal memory access was encountered", 1)


def _job_gone(cluster, exp, spec):
    cluster.batch.delete_namespaced_job(_name(spec), NS)


STATES = [
    ("unschedulable pod", _unschedulable, "pending", f"Unschedulable: {UNSCHED}"),
    ("FailedScheduling event", _failed_scheduling_event, "pending",
     "FailedScheduling: 0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."),
    ("image pull back-off", _image_pull, "pending", 'ImagePullBackOff: Back-off pulling image "registry.example/aal-k8s:test"'),
    ("a volume that does not mount", _failed_mount, "pending", f"FailedMount: {MOUNT}"),
    ("pods refused by a quota", _failed_create, "pending", 'FailedCreate: Error creating: pods "x" is forbidden: exceeded quota: gpu-quota'),
    ("suspended for Kueue", _suspended, "pending", "Suspended: waiting for Kueue admission in queue gpu"),
    ("newest pod running", _running, "running", ""),
    ("crashed, retry coming", _retrying, "pending", "Retrying: previous pod exit 137 (OOMKilled)"),
    ("backoff limit after OOM", _oom_failed, "failed",
     "BackoffLimitExceeded: Job has reached the specified backoff limit; last pod exit 137 (OOMKilled)"),
    ("crash with its last log line", _crashed_with_message, "failed",
     "BackoffLimitExceeded: Job has reached the specified backoff limit; last pod exit 1 (Error): RuntimeError: CUDA error: out of memory"),
    ("the store wins over the Job", _committed_but_job_failed, "complete", ""),
    ("Job gone, failure in the store", _job_gone_failure_recorded, "failed",
     "no Job; worker: CUDA error: an illegal memory access was encountered"),
    ("never submitted", _job_gone, "not_submitted", ""),
]  # fmt: skip


@pytest.mark.parametrize("prepare, state, reason", [s[1:] for s in STATES], ids=[s[0] for s in STATES])
def test_states_report_what_the_store_jobs_pods_and_events_say(backend, cluster, cfg, exp, prepare, state, reason):
    specs = _single(cfg, "square", "ring")
    backend.submit(specs, exp)
    prepare(cluster, exp, specs[0])
    got = backend.states(specs, exp)
    assert (got[specs[0].run_id].state, got[specs[0].run_id].reason) == (state, reason)
    assert got[specs[1].run_id].state == "pending"  # untouched: a Job, no pod yet


# -- cancel ------------------------------------------------------------------------------------
# -- logs --------------------------------------------------------------------------------------
def test_logs_print_the_newest_pod_of_the_run(backend, cluster, cfg, exp, capsys):
    [spec] = _single(cfg, "square")
    backend.submit([spec], exp)
    old = cluster.add_pod(_name(spec), "Failed", suffix="aaaaa", created="2025-01-01T00:00:00Z")
    new = cluster.add_pod(_name(spec), "Running", suffix="bbbbb", created="2025-01-01T02:00:00Z")
    cluster.logs[old["metadata"]["name"]] = "attempt 1\n"
    cluster.logs[new["metadata"]["name"]] = "attempt 2: epoch 1\n"
    backend.logs(spec.run_id, exp)
    assert capsys.readouterr().out == "attempt 2: epoch 1\n"
    backend.logs(spec.run_id, exp, follow=True)
    assert capsys.readouterr().out == "attempt 2: epoch 1\n"
    [call] = [c for c in cluster.calls_to("read_namespaced_pod_log") if c["follow"]]
    assert call["container"] == "worker" and call["name"] == new["metadata"]["name"]


def test_logs_of_a_run_without_pod_or_job_say_why(backend, cluster, cfg, exp):
    a, b = _single(cfg, "square", "ring")
    backend.submit([a], exp)
    with pytest.raises(KubernetesError, match=rf"^{NS}/{_name(a)}: no pod yet \(pending: Created"):
        backend.logs(a.run_id, exp)
    with pytest.raises(KubernetesError, match=rf"^{NS}/{_name(b)}: no such Job$"):
        backend.logs(b.run_id, exp)

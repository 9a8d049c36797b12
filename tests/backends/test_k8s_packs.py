"""Pack Jobs (``executor.runs_per_job`` > 1) on the Kubernetes backend, against the in-memory API:
one Job per pack, named from every member (so a resubmit, after members committed or a crash,
creates nothing new), each member's state read from the pack's Job and its own store records,
cancel deleting the pack Job, logs of a member from the pack's pod, and the plan counting packs."""

from __future__ import annotations

import pytest
from fake_k8s import NS

from aal_k8s.backends.k8s_manifests import job_name, job_runs, pack_job_name
from aal_k8s.config import load_config
from aal_k8s.planner import job_packs, plan_stage
from aal_k8s.store import ExperimentStore, open_store

N = 4  # synthetic single stage: 6 runs, so packs of 4 and 2


@pytest.fixture
def pcfg(k8s_overrides):
    return load_config(overrides=[*k8s_overrides, f"executor.runs_per_job={N}"], dataset="synthetic")


@pytest.fixture
def pexp(pcfg):
    return ExperimentStore(open_store(pcfg.store.uri), pcfg.experiment_name)


@pytest.fixture
def pbackend(make_backend, pcfg):
    return make_backend(pcfg)


def _packs(cfg):
    return job_packs(plan_stage("single", cfg), N)


def _name(pack) -> str:
    return pack_job_name(pack[0].experiment, pack)


def _commit(exp, spec) -> None:
    exp.commit_run(spec, {"best.safetensors": b"weights"}, {"val_acc": {}, "test_acc": {}, "heads": spec.heads})


def _runs(job) -> list[str]:
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return [args[i + 1] for i, a in enumerate(args) if a == "--run"]


# -- submit ------------------------------------------------------------------------------------
def test_one_job_per_pack_named_from_its_members_and_a_resubmit_creates_none(pbackend, cluster, pcfg, pexp, rec):
    specs = plan_stage("single", pcfg)
    report = pbackend.submit(specs, pexp)
    packs = _packs(pcfg)
    assert [len(p) for p in packs] == [4, 2] and sorted(report.submitted) == sorted(s.run_id for s in specs)
    assert sorted(cluster.jobs) == sorted(_name(p) for p in packs)
    for p in packs:
        job = cluster.job(_name(p))
        assert _runs(job) == job_runs(job) == [s.run_id for s in p]
    assert f"2 Jobs created in namespace {NS} for 6 runs, 0 already there" in rec.log.getvalue()
    # the same stage in another order (another attribute filter, a halving bracket): the same packs
    again = pbackend.submit(list(reversed(specs)), pexp)
    assert sorted(again.submitted) == sorted(report.submitted) and not again.failed
    assert len(cluster.calls_to("create_namespaced_job")) == 2
    names = sorted(cluster.jobs)
    pbackend.cancel(specs, pexp)  # no Job left to find: the names alone must come out the same
    pbackend.submit(list(reversed(specs)), pexp)
    assert sorted(cluster.jobs) == names and len(cluster.calls_to("create_namespaced_job")) == 4


RESUBMITS = [
    # (what happened since the first submit, the Job is still there, runs the new Job trains)
    ("crash: a member committed, the pack still running", True, None),
    ("pack Job cancelled, a member committed since", False, slice(1, None)),
    ("pack Job cancelled, nothing committed", False, slice(None)),
]  # fmt: skip


@pytest.mark.parametrize("job_kept, trains", [r[1:] for r in RESUBMITS], ids=[r[0] for r in RESUBMITS])
def test_a_resubmit_keeps_the_pack_name_and_leaves_committed_members_out(pbackend, cluster, pcfg, pexp, job_kept, trains):
    specs = plan_stage("single", pcfg)
    pbackend.submit(specs, pexp)
    pack = _packs(pcfg)[0]
    if not job_kept:
        cluster.batch.delete_namespaced_job(_name(pack), NS, propagation_policy="Background")
    if trains != slice(None):
        _commit(pexp, pack[0])
    report = pbackend.submit(specs, pexp)
    assert sorted(cluster.jobs) == sorted(_name(p) for p in _packs(pcfg))  # never a second Job for a pack
    if job_kept:
        assert len(cluster.calls_to("create_namespaced_job")) == 2
    else:
        assert len(cluster.calls_to("create_namespaced_job")) == 3
        assert _runs(cluster.job(_name(pack))) == [s.run_id for s in pack[trains]]
    assert report.skipped == ([] if trains == slice(None) else [pack[0].run_id])


def test_a_run_another_job_trains_is_left_out_of_a_new_pack(make_backend, cluster, cfg, pcfg, pexp):
    """Its own Job from runs_per_job=1: a pack made later must not train it in a second pod."""
    specs = plan_stage("single", pcfg)
    pack = _packs(pcfg)[0]
    make_backend(cfg).submit([pack[0]], pexp)  # runs_per_job=1: its own Job
    report = make_backend(pcfg).submit(specs, pexp)
    assert pack[0].run_id in report.submitted and not report.failed
    assert _runs(cluster.job(_name(pack))) == [s.run_id for s in pack[1:]]
    assert job_name(pack[0].experiment, pack[0].run_id) in cluster.jobs and len(cluster.jobs) == 3


# -- states / wait -----------------------------------------------------------------------------
def _one_committed_pack_running(cluster, exp, pack):
    _commit(exp, pack[0])
    cluster.add_pod(_name(pack), "Running")


def _pack_failed_one_worker_message(cluster, exp, pack):
    exp.record_failure(pack[1].run_id, "run x: dataset has no attribute 'hat'", 2)
    cluster.fail(_name(pack), "PodFailurePolicy", "Container worker exited with 2")


def _pack_succeeded_one_commit_missing(cluster, exp, pack):
    for s in pack[:1] + pack[2:]:
        _commit(exp, s)
    cluster.complete(_name(pack))


def _pack_unschedulable(cluster, exp, pack):
    cluster.add_pod(_name(pack), "Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: Insufficient cpu"}])  # fmt: skip


STATES = [
    ("a member committed, the pack running", _one_committed_pack_running,
     [("complete", ""), ("running", ""), ("running", ""), ("running", "")]),
    ("pack failed: each member its own worker message", _pack_failed_one_worker_message,
     [("failed", "PodFailurePolicy: Container worker exited with 2"),
      ("failed", "PodFailurePolicy: Container worker exited with 2; worker: run x: dataset has no attribute 'hat'"),
      ("failed", "PodFailurePolicy: Container worker exited with 2"), ("failed", "PodFailurePolicy: Container worker exited with 2")]),
    ("pack succeeded, one member's commit missing", _pack_succeeded_one_commit_missing,
     [("complete", ""), ("failed", "Job {ns}/{name} succeeded but"), ("complete", ""), ("complete", "")]),
    ("pack unschedulable", _pack_unschedulable, [("pending", "Unschedulable: 0/3 nodes: Insufficient cpu")] * 4),
]  # fmt: skip


@pytest.mark.parametrize("prepare, want", [s[1:] for s in STATES], ids=[s[0] for s in STATES])
def test_each_member_state_comes_from_its_pack_job_and_its_own_records(pbackend, cluster, pcfg, pexp, prepare, want):
    specs = plan_stage("single", pcfg)
    pbackend.submit(specs, pexp)
    pack, other = _packs(pcfg)
    prepare(cluster, pexp, pack)
    got = pbackend.states(specs, pexp)
    for spec, (state, reason) in zip(pack, want):
        assert got[spec.run_id].state == state, spec.run_id
        assert got[spec.run_id].reason.startswith(reason.format(ns=NS, name=_name(pack))), got[spec.run_id].reason
    assert {got[s.run_id].state for s in other} == {"pending"}  # the other pack: a Job, no pod yet


def test_wait_settles_every_member_from_the_pack_jobs_events(pbackend, cluster, pcfg, pexp):
    specs = plan_stage("single", pcfg)
    pbackend.submit(specs, pexp)
    pack, other = _packs(pcfg)
    missing = pack[2]

    def on_watch(n):  # each pack finishes; one member of the first never committed
        for p in (pack, other):
            for s in p:
                if s is not missing:
                    _commit(pexp, s)
            cluster.complete(_name(p))

    cluster.on_watch = on_watch
    final = pbackend.wait(specs, pexp)
    assert {r for r, st in final.items() if st.state == "complete"} == {s.run_id for s in specs} - {missing.run_id}
    assert final[missing.run_id].state == "failed" and f"Job {NS}/{_name(pack)} succeeded but" in final[missing.run_id].reason
    assert len(cluster.calls_to("watch")) == 1


# -- cancel / logs -----------------------------------------------------------------------------
def test_cancel_deletes_each_pack_job_once_and_names_its_members_not_committed(pbackend, cluster, pcfg, pexp):
    specs = plan_stage("single", pcfg)
    pbackend.submit(specs, pexp)
    pack, other = _packs(pcfg)
    _commit(pexp, pack[0])
    cancelled = pbackend.cancel(specs, pexp)
    assert sorted(cancelled) == sorted(s.run_id for s in specs if s.run_id != pack[0].run_id)
    deletes = [c["name"] for c in cluster.calls_to("delete_namespaced_job")]
    assert sorted(deletes) == sorted([_name(pack), _name(other)]) and not cluster.jobs
    assert pexp.is_committed(pack[0].run_id)


def test_logs_of_a_member_print_its_pack_pods_log(pbackend, cluster, pcfg, pexp, rec, capsys):
    specs = plan_stage("single", pcfg)
    pbackend.submit(specs, pexp)
    pack = _packs(pcfg)[0]
    pod = cluster.add_pod(_name(pack), "Running")
    cluster.logs[pod["metadata"]["name"]] = "run a: epoch 1\nrun b: epoch 1\n"
    pbackend.logs(pack[1].run_id, pexp)
    assert capsys.readouterr().out == "run a: epoch 1\nrun b: epoch 1\n"
    assert f"attempt 1 of Job {_name(pack)}; pack " in rec.log.getvalue()


# -- the plan and the confirmation -------------------------------------------------------------
def test_the_plan_and_the_confirmation_count_one_job_per_pack(pbackend, pcfg, pexp):
    from aal_k8s.cost import build_plan, confirm
    from aal_k8s.errors import AALError

    specs = plan_stage("single", pcfg)
    plan = build_plan(pcfg, pexp, ["single"], lambda _: specs)
    assert (plan.jobs, plan.runs_to_run) == (2, 6)
    alone = build_plan(load_config(overrides=[f"store.uri={pcfg.store.uri}", "executor.backend=k8s"], dataset="synthetic"),
                       pexp, ["single"], lambda _: specs)  # fmt: skip
    assert plan.hours(plan.stages[0]) == alone.hours(alone.stages[0])  # GPU-hours: per run, packed or not
    assert "single: 2 Jobs for 6 runs (packs of up to 4 runs per Job; GPU-h counted per run as if each trained alone" in plan.render()
    pcfg.plan.confirm_above_jobs = 1
    with pytest.raises(AALError, match="^2 Jobs to create, more than plan.confirm_above_jobs=1"):
        confirm(plan, pcfg, yes=False)
    for s in _packs(pcfg)[1]:  # a whole pack committed: its Job is no longer counted
        _commit(pexp, s)
    assert build_plan(pcfg, pexp, ["single"], lambda _: specs).jobs == 1
    text = pbackend.render(specs, pexp)
    assert text.startswith("# aal-k8s: 1 Jobs for 4 runs (packs of up to 4 runs per Job) for stage single")

"""The Kubernetes backend against a real control plane (kube-apiserver, the real Job controller and
scheduler) whose pods really run ``aal-k8s worker``, with runs committed in a real S3 server
(SeaweedFS on 127.0.0.1, reached by the pods through the Secret's AWS_ENDPOINT_URL).

Tiny synthetic runs, at most two pods at once. Select with ``-m k8s_e2e``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from aal_k8s.backends.k8s import KubernetesBackend
from aal_k8s.backends.k8s_manifests import RUN_LABEL, job_name, selector
from aal_k8s.cli.stages import plan
from aal_k8s.data import resolve_attributes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.k8s_e2e, pytest.mark.slow]

TIMEOUT = 300.0  # seconds any one wait below may take on a loaded 2-core machine


def raw(fn, *args, **kwargs) -> dict:
    """An API answer as the server sent it (camelCase JSON), not the client's models."""
    return json.loads(fn(*args, _preload_content=False, **kwargs).data)


def jobs_of(ns) -> dict[str, dict]:
    return {j["metadata"]["name"]: j for j in raw(ns.batch.list_namespaced_job, ns.name)["items"]}


def pods_of(ns, label_selector: str | None = None) -> list[dict]:
    return raw(ns.core.list_namespaced_pod, ns.name, label_selector=label_selector)["items"]


def until(what: str, check, timeout: float = TIMEOUT, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def specs_for(e2e, cfg, stage: str, attrs: str):
    exp = e2e.experiment(cfg)
    return exp, plan(cfg, exp, stage, resolve_attributes(cfg.dataset.name, attrs.split(",")))


def api_state(exp, run_id: str, committed: bool, jobs: dict, pods: list[dict]) -> str:
    """A run's state as the API server (and the store, for commits) showed it in one snapshot,
    derived here independently of the backend."""
    if committed:
        return "complete"
    job = jobs.get(job_name(exp.experiment, run_id))
    if job is None:
        return "not_submitted"
    conds = {c["type"] for c in job.get("status", {}).get("conditions") or [] if c["status"] == "True"}
    if "Failed" in conds:
        return "failed"
    mine = [p for p in pods if p["metadata"]["labels"].get(RUN_LABEL) == run_id]
    if any(p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp") for p in mine):
        return "running"
    return "pending"


LIFECYCLE = ("not_submitted", "pending", "running", "complete")


def between(first: str, last: str) -> set[str]:
    """The states a run may show to a reader that looked between two snapshots: a run only moves
    forward through LIFECYCLE, so a reader that read the store and then the pods may have caught
    any state from the first snapshot's to the last's (e.g. running, when the snapshots show
    pending and complete). A failure is only ever what a snapshot showed."""
    if first in LIFECYCLE and last in LIFECYCLE and LIFECYCLE.index(first) <= LIFECYCLE.index(last):
        return set(LIFECYCLE[LIFECYCLE.index(first) : LIFECYCLE.index(last) + 1])
    return {first, last}


def pod_pid(pod_name: str) -> int | None:
    """The pid of the local process the stand-in kubelet runs for ``pod_name`` (POD_NAME in its env)."""
    want = f"POD_NAME={pod_name}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if want in env and b"worker" in cmd:
            return int(pid)
    return None


# -- 1, 2: submit, names, labels, env, status agreeing with the API --------------------------------
def test_submitted_runs_get_documented_jobs_whose_pods_commit_and_status_agrees_with_the_api_throughout(e2e):
    cfg = e2e.config()
    exp, specs = specs_for(e2e, cfg, "single", "1,2")
    code, out, err = e2e.cli("submit", "--stage", "single", "--attrs", "1,2", *e2e.sets())
    assert code == 0 and "stage single: 2 submitted, 0 already complete, 0 failed" in out, err
    jobs = jobs_of(e2e.ns)
    assert sorted(jobs) == sorted(f"aal-synthetic-{s.run_id}" for s in specs)  # docs/kubernetes.md
    for spec in specs:
        job = jobs[f"aal-synthetic-{spec.run_id}"]
        assert job["metadata"]["labels"] == {
            "app.kubernetes.io/name": "aal-k8s", "app.kubernetes.io/part-of": "synthetic",
            "app.kubernetes.io/component": "worker", "app.kubernetes.io/managed-by": "aal-k8s",
            "aal-k8s/stage": "single", "aal-k8s/dataset": "synthetic", "aal-k8s/run": spec.run_id,
            "aal-k8s/attribute": spec.primary[0],
        }  # fmt: skip
        assert job["spec"]["template"]["metadata"]["labels"].items() >= job["metadata"]["labels"].items()
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "aal-k8s-store"}}]
        assert not any(e["name"].startswith("AWS_") for e in container["env"])  # credentials only via the Secret
    backend = KubernetesBackend(cfg)
    seen = set()

    def snapshot() -> tuple:
        """The store's commits, the Jobs and the pods, read together (one listing each)."""
        committed = {s.run_id: exp.is_committed(s.run_id) for s in specs}
        return committed, jobs_of(e2e.ns), pods_of(e2e.ns, selector(exp.experiment, ["single"]))

    def state_in(snap: tuple, run_id: str) -> str:
        committed, jobs, pods = snap
        return api_state(exp, run_id, committed[run_id], jobs, pods)

    def sample() -> bool:
        before = snapshot()
        states = backend.states(specs, exp)
        after = snapshot()
        for spec in specs:
            got = states[spec.run_id].state
            api = between(state_in(before, spec.run_id), state_in(after, spec.run_id))
            assert got in api, (spec.run_id, got, api, states[spec.run_id].reason)
            seen.add(got)
        return all(st.state == "complete" for st in states.values())

    until("both runs to commit", sample, every=0.3)
    assert {"running", "complete"} <= seen, seen
    # each pod ran the worker with the manifest's env: the Secret reached the store, POD_NAME (a
    # fieldRef) names the committing attempt
    pods = {p["metadata"]["name"]: p for p in pods_of(e2e.ns, selector(exp.experiment, ["single"]))}
    for spec in specs:
        record = exp.read_metrics(spec.run_id)
        assert any(record["attempt"].startswith(name + "-") for name in pods), (record["attempt"], sorted(pods))
        assert {p["metadata"]["labels"][RUN_LABEL] for p in pods.values()} >= {spec.run_id}
    code, out, _ = e2e.cli("status", "--stage", "single", *e2e.sets())
    row = next(ln for ln in out.splitlines() if ln.startswith("single "))
    assert code == 0 and row.split()[1:] == ["2", "0", "0", "0", "4", "0"]  # complete, running, pending, failed, not submitted, stopped


def test_submitting_again_while_the_runs_are_going_creates_no_second_job(e2e):
    argv = ["submit", "--stage", "single", "--attrs", "3", *e2e.sets()]
    assert e2e.cli(*argv)[0] == 0
    code, out, err = e2e.cli(*argv)
    assert code == 0 and "stage single: 1 submitted" in out
    assert "0 Jobs created in namespace" in err and "1 already there" in err
    assert len(jobs_of(e2e.ns)) == 1
    cfg = e2e.config()
    exp, specs = specs_for(e2e, cfg, "single", "3")
    until("the run to commit", lambda: exp.is_committed(specs[0].run_id))
    code, _, err = e2e.cli(*argv)  # and once it is complete: nothing to do
    assert code == 0 and len(jobs_of(e2e.ns)) == 1 and "already complete" in err


def test_a_pack_of_two_runs_trains_in_one_job_whose_members_commit_and_status_cancel_map_back(e2e):
    from aal_k8s.backends.k8s_manifests import job_runs, pack_job_name

    argv = ["submit", "--stage", "single", "--attrs", "1,2", *e2e.sets("executor.runs_per_job=2")]
    code, out, err = e2e.cli(*argv)
    assert code == 0 and "stage single: 2 submitted" in out, err
    cfg = e2e.config("executor.runs_per_job=2")
    exp, specs = specs_for(e2e, cfg, "single", "1,2")
    name = pack_job_name(exp.experiment, sorted(specs, key=lambda s: s.run_id))
    jobs = jobs_of(e2e.ns)
    assert list(jobs) == [name] and sorted(job_runs(jobs[name])) == sorted(s.run_id for s in specs)
    code, out, err = e2e.cli(*argv)  # while it trains: the same pack, no second Job
    assert code == 0 and "0 Jobs created" in err and list(jobs_of(e2e.ns)) == [name]
    until("both members to commit", lambda: all(exp.is_committed(s.run_id) for s in specs))
    [pod] = pods_of(e2e.ns, selector(exp.experiment, ["single"]))
    assert pod["metadata"]["labels"]["aal-k8s/pack"] == jobs[name]["metadata"]["labels"]["aal-k8s/pack"]
    for spec in specs:  # each member committed by the pack's one pod, as a run alone would be
        assert exp.read_metrics(spec.run_id)["attempt"].startswith(pod["metadata"]["name"] + "-")
    code, out, _ = e2e.cli("status", "--stage", "single", *e2e.sets("executor.runs_per_job=2"))
    row = next(ln for ln in out.splitlines() if ln.startswith("single "))
    assert code == 0 and row.split()[1:3] == ["2", "0"]
    assert KubernetesBackend(cfg).cancel(specs, exp) == []  # committed: the Job stays, the store too
    assert list(jobs_of(e2e.ns)) == [name]


#: Four λ halved once (eta 2, the rung at epoch 1 of 2): two packs of two train to the rung, the two
#: survivors go on together in a third pack Job.
HALVING_PACKS = ("adversarial.lambdas=[0.1, 0.5, 2.0, 8.0]", "adversarial.lambda_search=halving",
                 "adversarial.halving_eta=2", "executor.runs_per_job=2")  # fmt: skip


def test_a_pack_of_halving_rungs_trains_in_one_job_per_pack_and_rung_and_decides_as_the_local_backend(e2e, tmp_path):
    from aal_k8s import halving
    from aal_k8s.backends import run_halving
    from aal_k8s.backends.k8s_manifests import RUNG_LABEL, job_runs
    from aal_k8s.backends.local import LocalBackend
    from aal_k8s.config import load_config
    from aal_k8s.planner import plan_stage
    from aal_k8s.store import ExperimentStore, open_store

    cfg = e2e.config(*HALVING_PACKS)
    exp = e2e.experiment(cfg)
    # partners given, not reduced: the stage's prerequisites would be three more stages of Jobs
    specs = plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])
    report = run_halving(KubernetesBackend(cfg), exp, cfg, specs)
    assert not report.failed and len(report.stopped) == 2, report
    survivors = [s for s in specs if s.run_id not in report.stopped]
    waited = KubernetesBackend(cfg).wait(survivors, exp)
    assert {st.state for st in waited.values()} == {"complete"}, waited
    jobs = jobs_of(e2e.ns)
    rung = {n: sorted(job_runs(j)) for n, j in jobs.items() if j["metadata"]["labels"].get(RUNG_LABEL) == "1"}
    ids = sorted(s.run_id for s in specs)
    assert sorted(rung.values()) == [ids[:2], ids[2:]] and all(n.endswith("-e1") for n in rung)
    [final] = [n for n in jobs if n not in rung]
    assert sorted(job_runs(jobs[final])) == sorted(s.run_id for s in survivors)
    assert all(j["status"].get("succeeded") == 1 for j in jobs.values())
    [pod] = pods_of(e2e.ns, f"job-name={final}")
    for spec in survivors:  # both committed by the final pack's one pod, resumed from their rung checkpoints
        assert exp.read_metrics(spec.run_id)["attempt"].startswith(pod["metadata"]["name"] + "-")
    # status and cancel: the survivors are complete, the stopped runs' rung Jobs (succeeded) are no one's to cancel
    states = KubernetesBackend(cfg).states(specs, exp)
    assert {r: st.state for r, st in states.items() if st.state == "complete"} == {s.run_id: "complete" for s in survivors}
    assert KubernetesBackend(cfg).cancel(specs, exp) == [] and sorted(jobs_of(e2e.ns)) == sorted(jobs)
    # a rerun finds everything in the store: no Job created, the same decisions
    assert not run_halving(KubernetesBackend(cfg), exp, cfg, specs).failed and sorted(jobs_of(e2e.ns)) == sorted(jobs)

    # the same search on the local backend, in packs too: the same scores, the same λ stopped
    local_cfg = load_config(overrides=[*e2e.config_items(*HALVING_PACKS), "executor.backend=local",
                                       "executor.parallel=1", f"store.uri={tmp_path / 'local'}"], dataset="synthetic")  # fmt: skip
    local = ExperimentStore(open_store(local_cfg.store.uri), local_cfg.experiment_name)
    assert not run_halving(LocalBackend(local_cfg, progress=False), local, local_cfg, specs).failed
    bracket = halving.brackets(cfg, specs)["square"]
    ours, theirs = halving.summary(exp, bracket), halving.summary(local, bracket)
    assert ours["survivors"] == theirs["survivors"] and [d["stopped"] for d in ours["decisions"]] == [
        d["stopped"] for d in theirs["decisions"]]  # fmt: skip
    assert [[e["score"] for e in d["entrants"]] for d in ours["decisions"]] == [
        [e["score"] for e in d["entrants"]] for d in theirs["decisions"]]  # fmt: skip


# -- 5: deterministic failure, unschedulable runs, bounded patience --------------------------------
def test_a_worker_exiting_2_fails_its_job_without_retries_and_status_shows_the_workers_message(e2e):
    cfg = e2e.config()
    exp, specs = specs_for(e2e, cfg, "single", "1")
    # The manifest from --dry-run, applied by hand without a submit: the run's spec is not in the
    # store, which the worker reports as bad input (exit 2), and retrying cannot help.
    code, out, _ = e2e.cli("submit", "--stage", "single", "--attrs", "1", "--dry-run", *e2e.sets())
    import yaml

    (manifest,) = [d for d in yaml.safe_load_all(out) if d]
    e2e.ns.batch.create_namespaced_job(e2e.ns.name, manifest)
    name = manifest["metadata"]["name"]

    def failed():
        job = jobs_of(e2e.ns)[name]
        return any(c["type"] == "Failed" and c["status"] == "True" for c in job["status"].get("conditions") or [])

    until(f"{e2e.ns.name}/{name} to fail", failed)
    job = jobs_of(e2e.ns)[name]
    pods = pods_of(e2e.ns, f"{RUN_LABEL}={specs[0].run_id}")
    assert len(pods) == 1 and job["status"].get("failed") == 1  # no retry: podFailurePolicy FailJob on exit 2
    assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 2
    code, out, _ = e2e.cli("status", "--stage", "single", *e2e.sets())
    line = next(ln for ln in out.splitlines() if specs[0].run_id in ln)
    assert code == 0 and "PodFailurePolicy" in line and "exit 2" in line
    assert f"worker: run {specs[0].run_id}: no spec at {e2e.store}/" in line


def test_an_unschedulable_run_shows_the_schedulers_reason_and_the_pipeline_gives_up_saying_why(e2e):
    sets = e2e.sets("k8s.gpus=99", "k8s.wait_patience_seconds=6")  # the node has 8
    code, out, _ = e2e.cli("submit", "--stage", "single", "--attrs", "1", *sets)
    assert code == 0
    cfg = e2e.config("k8s.gpus=99")
    exp, specs = specs_for(e2e, cfg, "single", "1")

    def shown():
        out = e2e.cli("status", "--stage", "single", *sets)[1]
        return "Insufficient nvidia.com/gpu" in out and out

    out = until("status to show the scheduler's reason", shown)
    assert "pending, by reason:" in out and "single 1 runs: Unschedulable: 0/1 nodes are available" in out
    started = time.monotonic()
    # a process of its own, so that a pipeline waiting forever fails this test instead of hanging it
    r = subprocess.run([sys.executable, "-m", "aal_k8s", "pipeline", "--stages", "single", *sets],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    took = time.monotonic() - started
    assert r.returncode == 1 and took < 60, (r.returncode, took, r.stderr[-2000:])
    err = r.stderr
    last = err.strip().splitlines()[-1]
    assert "gave up waiting: 6 runs of stage single still pending" in last and "k8s.wait_patience_seconds=6" in last
    named = f"{e2e.ns.name}/{job_name(exp.experiment, sorted(s.run_id for s in plan(cfg, exp, 'single'))[0])}"
    assert f"{named}: Unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu" in last, last
    assert "Traceback" not in err


# -- 3, 6: disruptions and cancel; runs resume from their checkpoints ------------------------------
#: Long enough (several 1-2 s epochs) to disrupt a run between its first checkpoint and its commit.
LONGER = ("train.epochs=6", "dataset.synthetic.n_train=1024", "train.lr_decay_epoch=3")


def comparable(record: dict) -> dict:
    """What must be identical between a disturbed and an undisturbed run (all but wall-clock)."""
    return {
        "best_epoch": record["best_epoch"],
        "val_acc": record["val_acc"],
        "test_acc": record["test_acc"],
        "history": [{k: v for k, v in e.items() if k != "seconds"} for e in record["history"]],
        "weights_sha256": record["artifacts"]["best.safetensors"]["sha256"],
    }


def has_checkpoint(exp, run_id: str) -> bool:
    keys = exp.store.list(exp.key("runs", run_id, "attempts"))
    return any("/checkpoints/epoch-" in k and k.endswith(".json") for k in keys)


def running_pod(ns, run_id: str) -> str | None:
    for p in pods_of(ns, f"{RUN_LABEL}={run_id}"):
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp"):
            return p["metadata"]["name"]
    return None


def pod_log(pod_name: str) -> str:
    """The stand-in kubelet keeps a pod's output in /tmp/pod-<pod>/output.log (no pods/log API)."""
    with open(f"/tmp/pod-{pod_name}/output.log", errors="replace") as f:
        return f.read()


def undisturbed(e2e, attrs: str, *extra: str) -> dict:
    """The same runs with the local backend, into another experiment of the same bucket."""
    sets = e2e.sets(*extra, "executor.backend=local", "experiment=reference", "executor.parallel=1")
    code, _, err = e2e.cli("submit", "--stage", "single", "--attrs", attrs, *sets)
    assert code == 0, err
    cfg = e2e.config(*extra, "experiment=reference")
    exp, specs = specs_for(e2e, cfg, "single", attrs)
    return {s.run_id: comparable(exp.read_metrics(s.run_id)) for s in specs}


def test_a_deleted_pod_and_a_killed_worker_resume_from_their_checkpoints_and_end_bitwise_as_undisturbed_runs(e2e):
    sets = e2e.sets(*LONGER)
    cfg = e2e.config(*LONGER)
    exp, specs = specs_for(e2e, cfg, "single", "1,2")
    assert e2e.cli("submit", "--stage", "single", "--attrs", "1,2", *sets)[0] == 0
    disturbed = {}
    for spec, how in zip(specs, ("delete the pod", "SIGKILL the worker")):
        pod = until(f"a checkpoint of {spec.run_id}",
                    lambda: has_checkpoint(exp, spec.run_id) and running_pod(e2e.ns, spec.run_id), every=0.2)  # fmt: skip
        assert not exp.is_committed(spec.run_id)
        if how == "delete the pod":
            e2e.ns.core.delete_namespaced_pod(pod, e2e.ns.name)
        else:
            os.kill(until(f"the worker process of pod {pod}", lambda: pod_pid(pod)), signal.SIGKILL)
        disturbed[spec.run_id] = pod
    until("both runs to commit", lambda: all(exp.is_committed(s.run_id) for s in specs))
    want = undisturbed(e2e, "1,2", *LONGER)
    for spec in specs:
        record = exp.read_metrics(spec.run_id)
        assert not record["attempt"].startswith(disturbed[spec.run_id] + "-")  # a new pod committed it
        pods = {p["metadata"]["name"] for p in pods_of(e2e.ns, f"{RUN_LABEL}={spec.run_id}")}
        (winner,) = [p for p in pods if record["attempt"].startswith(p + "-")]
        assert "resuming after epoch" in pod_log(winner)
        assert int(record["environment"].get("resumed_after_epoch") or 0) >= 1
        assert comparable(record) == want[spec.run_id]
    job = jobs_of(e2e.ns)[job_name(exp.experiment, specs[1].run_id)]
    assert job["status"].get("failed") == 1 and job["status"].get("succeeded") == 1  # exit 137, retried once


def test_cancel_removes_jobs_and_pods_leaves_the_store_alone_and_a_later_submit_continues(e2e):
    sets = e2e.sets(*LONGER)
    cfg = e2e.config(*LONGER)
    exp, specs = specs_for(e2e, cfg, "single", "1")
    run_id = specs[0].run_id
    assert e2e.cli("submit", "--stage", "single", "--attrs", "1", *sets)[0] == 0
    until(f"a checkpoint of {run_id}", lambda: has_checkpoint(exp, run_id) and running_pod(e2e.ns, run_id), every=0.2)
    # the worker itself rotates its checkpoints (keeps the last two) until its pod is gone, so
    # those keys may change under us: everything else must survive the cancel untouched
    before = {k for k in exp.store.list("") if "/checkpoints/" not in k}
    code, out, err = e2e.cli("cancel", "--stage", "single", *sets)
    assert code == 0 and f"cancelled {run_id}" in out and "1 runs cancelled" in out, (out, err)
    until("the Job and its pod to be gone", lambda: not jobs_of(e2e.ns) and not pods_of(e2e.ns), timeout=120)
    assert before <= set(exp.store.list("")) and not exp.is_committed(run_id)  # nothing deleted from the store
    assert has_checkpoint(exp, run_id)  # and what the next attempt resumes from is still there
    assert e2e.cli("submit", "--stage", "single", "--attrs", "1", *sets)[0] == 0
    until("the run to commit", lambda: exp.is_committed(run_id))
    record = exp.read_metrics(run_id)
    assert int(record["environment"].get("resumed_after_epoch") or 0) >= 1
    assert comparable(record) == undisturbed(e2e, "1", *LONGER)[run_id]


# -- 7: least rights -------------------------------------------------------------------------------
def controller_kubeconfig(e2e, path) -> str:
    """k8s/rbac.yaml applied to the test namespace, and a kubeconfig with a token of its
    aal-k8s-controller ServiceAccount (nothing else bound to it)."""
    import yaml

    with open(os.path.join(REPO, "k8s", "rbac.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    ns = e2e.ns
    for d in docs:
        d["metadata"]["namespace"] = ns.name
        for s in d.get("subjects") or []:
            s["namespace"] = ns.name
        create = {"ServiceAccount": ns.core.create_namespaced_service_account,
                  "Role": ns.rbac.create_namespaced_role,
                  "RoleBinding": ns.rbac.create_namespaced_role_binding}[d["kind"]]  # fmt: skip
        create(ns.name, d)
    token = ns.core.create_namespaced_service_account_token(
        "aal-k8s-controller", ns.name, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    with open(e2e.testbed.kubeconfig) as f:
        admin = yaml.safe_load(f)
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": "controller", "user": {"token": token}}],
        "contexts": [{"name": "controller", "context": {"cluster": cluster["name"], "user": "controller",
                                                         "namespace": ns.name}}],
        "current-context": "controller",
    }  # fmt: skip
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return str(path)


def test_the_controller_role_of_rbac_yaml_is_enough_to_submit_watch_explain_and_cancel(e2e, tmp_path, monkeypatch):
    from kubernetes import client

    kubeconfig = controller_kubeconfig(e2e, tmp_path / "controller.kubeconfig")
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
    as_controller = e2e.testbed.api(kubeconfig)
    with pytest.raises(client.ApiException) as denied:  # the Role is not more than it says
        client.CoreV1Api(as_controller).read_namespaced_secret("aal-k8s-store", e2e.ns.name)
    assert denied.value.status == 403
    cfg = e2e.config()
    exp, specs = specs_for(e2e, cfg, "single", "1,2,3")
    outputs = []
    # run 1 trains; run 2 cannot be scheduled; run 3's Job (applied from --dry-run, no spec in the
    # store) fails with exit 2 -- all through the controller's token
    code, out, err = e2e.cli("submit", "--stage", "single", "--attrs", "1", *e2e.sets())
    outputs += [out, err]
    assert code == 0, err
    code, out, err = e2e.cli("submit", "--stage", "single", "--attrs", "2", *e2e.sets("k8s.gpus=99"))
    outputs += [out, err]
    assert code == 0, err
    code, out, err = e2e.cli("submit", "--stage", "single", "--attrs", "3", "--dry-run", *e2e.sets())
    import yaml

    (manifest,) = [d for d in yaml.safe_load_all(out) if d]
    client.BatchV1Api(as_controller).create_namespaced_job(e2e.ns.name, manifest)
    backend = KubernetesBackend(cfg)
    final = backend.wait([specs[0], specs[2]], exp)  # list + watch
    assert final[specs[0].run_id].state == "complete" and final[specs[2].run_id].state == "failed"
    reason = final[specs[2].run_id].reason
    assert reason.startswith("PodFailurePolicy: Container worker") and "last pod exit 2" in reason, reason
    assert f"worker: run {specs[2].run_id}: no spec at {e2e.store}/" in reason
    code, out, err = e2e.cli("status", "--stage", "single", *e2e.sets())  # jobs, pods, events, the store
    outputs += [out, err]
    row = next(ln for ln in out.splitlines() if ln.startswith("single "))
    assert code == 0 and row.split()[1:] == ["1", "0", "1", "1", "3", "0"], out
    assert "Unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu" in out
    assert f"worker: run {specs[2].run_id}: no spec at" in out
    code, out, err = e2e.cli("cancel", "--stage", "single", *e2e.sets())
    outputs += [out, err]
    assert code == 0 and "2 runs cancelled" in out, err
    until("the cancelled Jobs to be gone", lambda: list(jobs_of(e2e.ns)) == [job_name(exp.experiment, specs[0].run_id)])
    for text in outputs:
        assert "403" not in text and "forbidden" not in text.lower(), text


# -- 9: scale --------------------------------------------------------------------------------------
def test_the_780_jobs_of_a_celeba_pairwise_stage_are_created_with_one_call_each_and_all_cancelled(e2e, tmp_path):
    import importlib.util

    path = os.path.join(REPO, "benchmarks", "bench_k8s_scale.py")
    spec = importlib.util.spec_from_file_location("bench_k8s_scale", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.run(e2e.ns.name, str(tmp_path / "store"))  # suspended Jobs: no pod starts
    assert figures["jobs"] == 780
    assert figures["submit"]["calls"] == {"list_namespaced_job": 1, "create_namespaced_job": 780}
    assert figures["submit again"]["calls"] == {"list_namespaced_job": 1}
    assert figures["reasons"] == {("pending", "Suspended: waiting for Kueue admission in queue bench"): 780}
    assert figures["cancel"]["calls"] == {"list_namespaced_job": 1, "delete_namespaced_job": 780}
    assert not jobs_of(e2e.ns) and not pods_of(e2e.ns)


# -- 4, 8: the whole protocol on Kubernetes, an API server restart in the middle -------------------
def exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie nobody reaped
    except OSError:
        return True


def restart_apiserver(testbed) -> None:
    """Stop the testbed's kube-apiserver (its pid file, checked to be that process) and start it
    again with up.sh, which restarts only what is not running."""
    with open(os.path.join(testbed.state, "run", "kube-apiserver.pid")) as f:
        pid = int(f.read())
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"kube-apiserver" in f.read()
    os.kill(pid, signal.SIGTERM)
    try:  # it drains its requests first; on a loaded machine that can take a minute
        until("kube-apiserver to exit", lambda: exited(pid), timeout=15, every=0.2)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        until("kube-apiserver to die", lambda: exited(pid), timeout=30, every=0.2)
    time.sleep(3)  # a few seconds without an API server: watches drop, calls fail and are retried
    r = subprocess.run(["bash", os.path.join(testbed.folder, "up.sh")], env=testbed.env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_pipeline_on_kubernetes_survives_an_api_server_restart_and_its_model_set_downloads_and_predicts(
    e2e, tmp_path
):
    from PIL import Image

    from aal_k8s.data import load_dataset

    # the default retry policy (1 s doubling to 60 s, 6 tries) must outlast the restart
    sets = e2e.sets("adversarial.lambdas=[0.5]", "k8s.api_backoff_seconds=1", "k8s.api_backoff_max_seconds=60")
    proc = subprocess.Popen([sys.executable, "-m", "aal_k8s", "pipeline", "--output", str(tmp_path / "report.md"),
                             *sets], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        until("the pairwise stage to be under way",
              lambda: sum(j.startswith("aal-synthetic-pair-") for j in jobs_of(e2e.ns)) >= 3, timeout=600)  # fmt: skip
        restart_apiserver(e2e.testbed)
        out, err = proc.communicate(timeout=1500)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "watch dropped" in err or "retry" in err, err[-3000:]  # the outage was seen, and outlasted
    cfg = e2e.config("adversarial.lambdas=[0.5]")
    exp = e2e.experiment(cfg)
    jobs = jobs_of(e2e.ns)
    runs = sorted(k.split("/")[2] for k in exp.store.list(exp.key("runs")) if k.endswith("/metrics.json"))
    planned = [s.run_id for stage in ("single", "pairwise", "multi", "adversarial") for s in plan(cfg, exp, stage)]
    assert runs == sorted(planned) and len(runs) > 6 + 15 + 1  # every run of every stage, once
    assert sorted(jobs) == sorted(job_name(exp.experiment, r) for r in runs)  # one Job per run, no more
    for run_id in runs:
        record = exp.read_metrics(run_id)
        attempts = {k.split("/")[4] for k in exp.store.list(exp.key("runs", run_id, "attempts"))}
        assert attempts == {record["attempt"]}, (run_id, attempts)  # one pod trained it: nothing ran twice
        assert jobs[job_name(exp.experiment, run_id)]["status"].get("succeeded") == 1
    assert f"final model set: {e2e.store}/synthetic/final/manifest.json" in out
    assert "## " in (tmp_path / "report.md").read_text()
    dest = tmp_path / "models"
    code, out, err = e2e.cli("download", "--to", str(dest), *sets)
    assert code == 0 and "6 classifiers in" in out, err
    split = load_dataset(cfg.dataset).splits["test"]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(split.images[i].permute(1, 2, 0).numpy()).save(folder / f"p{i}.png")
    code, out, err = e2e.cli("predict", "--models", str(dest), "--format", "json", str(folder))
    assert code == 0, err
    assert len(json.loads(out)["predictions"]) == 3

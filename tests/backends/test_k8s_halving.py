"""λ by successive halving on the Kubernetes backend (fake API): one Job per surviving run and
rung, the decisions wait for every Job of the rung, a rerun creates nothing new."""

from __future__ import annotations

import pytest

from aal_k8s import halving
from aal_k8s.backends import run_halving
from aal_k8s.backends.k8s_manifests import RUNG_LABEL, job_runs
from aal_k8s.config import load_config
from aal_k8s.planner import plan_stage
from aal_k8s.store import ExperimentStore, open_store

# val accuracy per epoch (6 epochs) of square's lambdas: 1.0 survives both rungs, 0.1 the first
TABLE = {0.1: [.5, .6, .6, .6, .6, .6], 0.3: [.5, .7, .7, .7, .7, .7], 1.0: [.6, .6, .8, .9, .9, .9],
         3.0: [.4, .5, .5, .5, .5, .5], 10.0: [.3, .3, .3, .3, .3, .3]}  # fmt: skip


def _arg(args: list[str], flag: str, default=None):
    return args[args.index(flag) + 1] if flag in args else default


def _args(job: dict) -> list[str]:
    return job["spec"]["template"]["spec"]["containers"][0]["args"]


def _runs(job: dict) -> list[str]:
    args = _args(job)
    return [args[i + 1] for i, a in enumerate(args) if a == "--run"]


def play(exp, run_id: str, until: int, epochs: int) -> float:
    """What the worker leaves in the store for ``run_id`` (played from TABLE); its λ."""
    spec = exp.read_spec(run_id)
    end = until or epochs
    hist = [{"epoch": e, "val_acc": {"square": TABLE[spec.lam][e - 1]}} for e in range(1, end + 1)]
    if until:
        halving.write_rung(exp, spec.run_id, until, hist, float(end))
    else:
        acc = {"square": max(h["val_acc"]["square"] for h in hist)}
        exp.commit_run(spec, {}, {"val_acc": acc, "test_acc": acc, "heads": spec.heads, "history": hist})
    return spec.lam


def kubelet(cluster, exp, epochs: int, ran: list):
    """Each watch: every Job not finished yet runs its worker (each run it names, played from
    TABLE) and completes."""

    def on_watch(n):
        for name, job in list(cluster.jobs.items()):
            if (job.get("status") or {}).get("succeeded"):
                continue
            until = int(_arg(_args(job), "--until-epoch", 0))
            for run_id in _runs(job):
                ran.append((play(exp, run_id, until, epochs), until))
            cluster.complete(name)

    cluster.on_watch = on_watch


HALVING = ["adversarial.lambdas=[0.1, 0.3, 1.0, 3.0, 10.0]", "adversarial.lambda_search=halving",
           "adversarial.halving_eta=2"]  # fmt: skip


@pytest.fixture
def halving_cfg(k8s_overrides):
    return load_config(overrides=[*k8s_overrides, *HALVING], dataset="synthetic")


def halve_square(make_backend, cluster, cfg):
    """square's halving search against ``cluster``'s kubelet: no run failed, λ 1.0 the one survivor
    (TABLE), whose own Job commits it. (exp, specs, what the kubelet ran, the survivor)."""
    exp = ExperimentStore(open_store(cfg.store.uri), cfg.experiment_name)
    specs = plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])
    ran: list = []
    kubelet(cluster, exp, cfg.train.epochs, ran)
    report = run_halving(make_backend(cfg), exp, cfg, specs)
    assert not report.failed
    assert sorted(report.stopped) == sorted(s.run_id for s in specs if s.lam != 1.0)
    # submit returns once the survivor's own Job exists (as for any stage); the pipeline waits for it
    survivor = [s for s in specs if s.lam == 1.0]
    assert {r: st.state for r, st in make_backend(cfg).wait(survivor, exp).items()} == {survivor[0].run_id: "complete"}
    return exp, specs, ran, survivor


def assert_decided_and_a_rerun_creates_none(make_backend, cluster, cfg, exp, specs) -> None:
    (d1, d2) = halving.summary(exp, halving.brackets(cfg, specs)["square"])["decisions"]
    assert d1["survivors"] == [0.1, 1.0] and d2["survivors"] == [1.0]
    created = len(cluster.calls_to("create_namespaced_job"))
    again = run_halving(make_backend(cfg), exp, cfg, specs)  # a rerun: everything is in the store
    assert not again.failed and len(cluster.calls_to("create_namespaced_job")) == created


def test_one_job_per_surviving_run_and_rung_and_a_rerun_creates_none(make_backend, cluster, halving_cfg):
    cfg = halving_cfg
    exp, specs, ran, _ = halve_square(make_backend, cluster, cfg)
    # rung 1 (epoch 1): 5 Jobs; rung 2 (epoch 3): the 2 survivors; then the 1 survivor's own Job
    assert sorted(ran) == sorted([(lam, 1) for lam in TABLE] + [(0.1, 3), (1.0, 3), (1.0, 0)])
    assert len(cluster.jobs) == 8 and len({j["metadata"]["name"] for j in cluster.jobs.values()}) == 8
    assert_decided_and_a_rerun_creates_none(make_backend, cluster, cfg, exp, specs)


def _sets(overrides) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def test_the_dry_run_and_the_confirmation_count_one_job_per_run_and_rung(make_backend, cluster, halving_cfg, capsys):
    import yaml

    from aal_k8s.cost import build_plan, confirm
    from aal_k8s.errors import AALError

    cfg = halving_cfg
    exp = ExperimentStore(open_store(cfg.store.uri), cfg.experiment_name)
    specs = plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])
    # nothing trained: rung 1 (epoch 1) 5 Jobs, rung 2 (epoch 3) 2, the survivor's own Job 1
    assert build_plan(cfg, exp, ["adversarial"], lambda _: specs).jobs == 8
    text = make_backend(cfg).render(specs, exp)
    jobs = [d for d in yaml.safe_load_all(text) if d]
    assert text.startswith("# aal-k8s: 5 Jobs now, 8 over the whole halving search, for stage adversarial")
    assert sorted(j["metadata"]["name"][-3:] for j in jobs) == ["-e1"] * 5
    assert all(j["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--until-epoch", "1"] for j in jobs)
    cfg.plan.confirm_above_jobs = 6  # 5 runs are under it, their 8 Jobs are not
    with pytest.raises(AALError, match="^8 Jobs to create, more than plan.confirm_above_jobs=6"):
        confirm(build_plan(cfg, exp, ["adversarial"], lambda _: specs), cfg, yes=False)

    ran: list = []
    kubelet(cluster, exp, cfg.train.epochs, ran)
    make_backend(cfg).submit(specs, exp, until_epoch=1)
    make_backend(cfg).wait(specs, exp, until_epoch=1)
    # rung 1 reached, not decided yet: all 5 count for it as done; 2 go on to epoch 3, then 1 Job
    assert build_plan(cfg, exp, ["adversarial"], lambda _: specs).jobs == 3
    assert make_backend(cfg).render(specs, exp).startswith("# aal-k8s: 0 Jobs now, 3 over the whole halving search")


def test_status_shows_the_runs_halving_stopped_as_stopped_with_their_rung(
    cli_cluster, make_backend, halving_cfg, k8s_overrides, monkeypatch, capsys
):
    cfg = halving_cfg
    exp = ExperimentStore(open_store(cfg.store.uri), cfg.experiment_name)
    specs = plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])
    kubelet(cli_cluster, exp, cfg.train.epochs, [])
    run_halving(make_backend(cfg), exp, cfg, specs)
    make_backend(cfg).wait([s for s in specs if s.lam == 1.0], exp)
    monkeypatch.setattr("aal_k8s.cli.status.plan", lambda c, e, stage: specs)  # partners without a reduce
    from aal_k8s.cli import main

    capsys.readouterr()
    assert main(["status", "--stage", "adversarial", *_sets([*k8s_overrides, *HALVING])]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.startswith(("stage", "adversarial"))}
    assert dict(zip(rows["stage"], map(int, rows["adversarial"]))) == {
        "complete": 1, "running": 0, "pending": 0, "failed": 0, "not_submitted": 0, "stopped": 4,
    }  # fmt: skip
    lam = {s.run_id: s.lam for s in specs}
    stopped = {lam[ln.split()[1].rstrip(":")]: ln.split()[-1] for ln in out.splitlines() if "halving stopped it" in ln}
    assert stopped == {0.3: "1", 3.0: "1", 10.0: "1", 0.1: "3"}  # TABLE: 0.1 and 1.0 pass epoch 1, 1.0 epoch 3


# -- packs of halving rungs (executor.runs_per_job > 1) ------------------------------------------
@pytest.fixture
def packed_cfg(k8s_overrides):
    return load_config(overrides=[*k8s_overrides, *HALVING, "executor.runs_per_job=2"], dataset="synthetic")


def _rung_jobs(cluster, epoch: int) -> dict[str, list[str]]:
    """Job name -> the runs it trains, of the Jobs that train to ``epoch`` (0: to the end)."""
    return {n: _runs(j) for n, j in cluster.jobs.items() if int(_arg(_args(j), "--until-epoch", 0)) == epoch}


def test_packs_of_halving_rungs_one_job_per_pack_and_rung_the_same_decisions_a_rerun_creates_none(
    make_backend, cluster, packed_cfg
):
    cfg = packed_cfg
    exp, specs, ran, survivor = halve_square(make_backend, cluster, cfg)
    # the same runs trained as with one Job per run and rung (the test above), in fewer Jobs:
    # rung 1 (epoch 1) 5 runs in packs of 2, 2 and 1; rung 2 (epoch 3) the 2 survivors in one; the survivor's own
    assert sorted(ran) == sorted([(lam, 1) for lam in TABLE] + [(0.1, 3), (1.0, 3), (1.0, 0)])
    ids = sorted(s.run_id for s in specs)
    assert sorted(map(sorted, _rung_jobs(cluster, 1).values())) == [ids[:2], ids[2:4], ids[4:]]
    assert sorted(map(sorted, _rung_jobs(cluster, 3).values())) == [sorted(s.run_id for s in specs if s.lam in (0.1, 1.0))]
    assert list(_rung_jobs(cluster, 0).values()) == [[survivor[0].run_id]]
    for name, job in cluster.jobs.items():
        until = int(_arg(_args(job), "--until-epoch", 0))
        assert len(name) <= 63 and name.endswith(f"-e{until}") == bool(until)
        if len(_runs(job)) > 1:  # a pack Job: its rung label and its members' annotation, for status and cancel
            assert job["metadata"]["labels"][RUNG_LABEL] == str(until) and job_runs(job) == _runs(job)
    assert_decided_and_a_rerun_creates_none(make_backend, cluster, cfg, exp, specs)


@pytest.mark.parametrize("job_kept", [True, False], ids=["pack Job retrying", "pack Job gone (TTL, cancel)"])
def test_a_rerun_after_a_crash_mid_rung_creates_no_second_pack_job_and_reaches_the_same_decisions(
    make_backend, cluster, packed_cfg, job_kept
):
    cfg = packed_cfg
    exp = ExperimentStore(open_store(cfg.store.uri), cfg.experiment_name)
    specs = plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])
    make_backend(cfg).submit(specs, exp, until_epoch=1)  # the driver crashed after creating rung 1's Jobs
    first = dict(_rung_jobs(cluster, 1))
    assert len(first) == 3
    # one member of a two-run pack got to the rung before its pod died: its Job is still there, retrying
    name, (done, _) = next((n, r) for n, r in first.items() if len(r) == 2)
    play(exp, done, 1, cfg.train.epochs)
    if not job_kept:
        del cluster.jobs[name]
    created = len(cluster.calls_to("create_namespaced_job"))
    kubelet(cluster, exp, cfg.train.epochs, [])
    run_halving(make_backend(cfg), exp, cfg, specs)  # the rerun: rung 1's Jobs are found, not made again
    rung1 = [c["body"] for c in cluster.calls_to("create_namespaced_job")[created:] if "-e1" in c["body"]["metadata"]["name"]]
    if job_kept:
        assert rung1 == [] and _rung_jobs(cluster, 1) == first
    else:  # made again under its name (the pack of every entrant), for the member still short of the rung
        assert [(j["metadata"]["name"], _runs(j)) for j in rung1] == [(name, [r for r in first[name] if r != done])]
    (d1, d2) = halving.summary(exp, halving.brackets(cfg, specs)["square"])["decisions"]
    assert d1["survivors"] == [0.1, 1.0] and d2["survivors"] == [1.0]


def test_status_and_cancel_map_a_pack_rung_job_back_to_its_members(make_backend, cluster, packed_cfg):
    cfg = packed_cfg
    exp = ExperimentStore(open_store(cfg.store.uri), cfg.experiment_name)
    specs = plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])
    make_backend(cfg).submit(specs, exp, until_epoch=1)
    jobs = _rung_jobs(cluster, 1)
    running, finished = [n for n, r in jobs.items() if len(r) == 2]
    cluster.add_pod(running, phase="Running")
    for run_id in jobs[finished]:  # this pack got to the rung: its members wait for the decision
        play(exp, run_id, 1, cfg.train.epochs)
    cluster.complete(finished)
    states = make_backend(cfg).states(specs, exp)  # status: no rung at hand
    assert {r: states[r].state for r in jobs[running]} == {r: "running" for r in jobs[running]}
    # a succeeded rung Job is no failed run (its work is the rung record), nor the owner of its members
    assert {r: states[r].state for r in jobs[finished]} == {r: "not_submitted" for r in jobs[finished]}
    cancelled = make_backend(cfg).cancel(specs, exp)
    assert sorted(cancelled) == sorted(r for n, rs in jobs.items() if n != finished for r in rs)
    assert sorted(cluster.jobs) == [finished]


def test_the_dry_run_and_the_plan_count_one_job_per_pack_and_rung(make_backend, cluster, packed_cfg):
    import yaml

    from aal_k8s.cost import build_plan

    cfg = packed_cfg
    exp = ExperimentStore(open_store(cfg.store.uri), cfg.experiment_name)
    specs = plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])
    # nothing trained: rung 1 (epoch 1) 5 runs in 3 packs, rung 2 (epoch 3) 2 runs in 1, the survivor's Job 1
    plan = build_plan(cfg, exp, ["adversarial"], lambda _: specs)
    assert plan.jobs == 5 and "adversarial: 5 Jobs for 5 runs (halving: one Job per pack of up to 2 runs and rung)" in plan.render()
    text = make_backend(cfg).render(specs, exp)
    assert text.startswith("# aal-k8s: 3 Jobs now for 5 runs (packs of up to 2 runs per Job), 5 over the whole "
                           "halving search, for stage adversarial")  # fmt: skip
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert sorted(len(_runs(d)) for d in docs) == [1, 2, 2]
    assert all(d["metadata"]["name"].endswith("-e1") and _args(d)[-2:] == ["--until-epoch", "1"] for d in docs)
    make_backend(cfg).submit(specs, exp, until_epoch=1)
    assert sorted(cluster.jobs) == sorted(d["metadata"]["name"] for d in docs)  # what submit creates

    kubelet(cluster, exp, cfg.train.epochs, [])
    make_backend(cfg).wait(specs, exp, until_epoch=1)
    # rung 1 reached, not decided yet: its runs count as done; 2 go on to epoch 3 in 1 pack, then 1 Job
    assert build_plan(cfg, exp, ["adversarial"], lambda _: specs).jobs == 2
    assert make_backend(cfg).render(specs, exp).startswith("# aal-k8s: 0 Jobs now for 0 runs (packs of up to 2 runs "
                                                           "per Job), 2 over the whole halving search")  # fmt: skip

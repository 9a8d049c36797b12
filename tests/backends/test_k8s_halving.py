"""λ by successive halving on the Kubernetes backend (fake API): one Job per surviving run and
rung, the decisions wait for every Job of the rung, a rerun creates nothing new."""

from __future__ import annotations

import pytest

from aal_k8s import halving
from aal_k8s.backends import run_halving
from aal_k8s.config import load_config
from aal_k8s.planner import plan_stage
from aal_k8s.store import ExperimentStore, open_store

# val accuracy per epoch (6 epochs) of square's lambdas: 1.0 survives both rungs, 0.1 the first
TABLE = {0.1: [.5, .6, .6, .6, .6, .6], 0.3: [.5, .7, .7, .7, .7, .7], 1.0: [.6, .6, .8, .9, .9, .9],
         3.0: [.4, .5, .5, .5, .5, .5], 10.0: [.3, .3, .3, .3, .3, .3]}  # fmt: skip


def _arg(args: list[str], flag: str, default=None):
    return args[args.index(flag) + 1] if flag in args else default


def kubelet(cluster, exp, epochs: int, ran: list):
    """Each watch: every Job not finished yet runs its worker (played from TABLE) and completes."""

    def on_watch(n):
        for name, job in list(cluster.jobs.items()):
            if (job.get("status") or {}).get("succeeded"):
                continue
            args = job["spec"]["template"]["spec"]["containers"][0]["args"]
            spec, until = exp.read_spec(_arg(args, "--run")), int(_arg(args, "--until-epoch", 0))
            end = until or epochs
            hist = [{"epoch": e, "val_acc": {"square": TABLE[spec.lam][e - 1]}} for e in range(1, end + 1)]
            if until:
                halving.write_rung(exp, spec.run_id, until, hist, float(end))
            else:
                acc = {"square": max(h["val_acc"]["square"] for h in hist)}
                exp.commit_run(spec, {}, {"val_acc": acc, "test_acc": acc, "heads": spec.heads, "history": hist})
            ran.append((spec.lam, until))
            cluster.complete(name)

    cluster.on_watch = on_watch


@pytest.fixture
def halving_cfg(k8s_overrides):
    extra = ["adversarial.lambdas=[0.1, 0.3, 1.0, 3.0, 10.0]", "adversarial.lambda_search=halving",
             "adversarial.halving_eta=2"]  # fmt: skip
    return load_config(overrides=[*k8s_overrides, *extra], dataset="synthetic")


def test_one_job_per_surviving_run_and_rung_and_a_rerun_creates_none(make_backend, cluster, halving_cfg):
    cfg = halving_cfg
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
    # rung 1 (epoch 1): 5 Jobs; rung 2 (epoch 3): the 2 survivors; then the 1 survivor's own Job
    assert sorted(ran) == sorted([(lam, 1) for lam in TABLE] + [(0.1, 3), (1.0, 3), (1.0, 0)])
    assert len(cluster.jobs) == 8 and len({j["metadata"]["name"] for j in cluster.jobs.values()}) == 8
    (d1, d2) = halving.summary(exp, halving.brackets(cfg, specs)["square"])["decisions"]
    assert d1["survivors"] == [0.1, 1.0] and d2["survivors"] == [1.0]

    created = len(cluster.calls_to("create_namespaced_job"))
    again = run_halving(make_backend(cfg), exp, cfg, specs)  # a rerun: everything is in the store
    assert not again.failed and len(cluster.calls_to("create_namespaced_job")) == created


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
    extra = ["adversarial.lambdas=[0.1, 0.3, 1.0, 3.0, 10.0]", "adversarial.lambda_search=halving",
             "adversarial.halving_eta=2"]  # fmt: skip
    assert main(["status", "--stage", "adversarial", *_sets([*k8s_overrides, *extra])]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.startswith(("stage", "adversarial"))}
    assert dict(zip(rows["stage"], map(int, rows["adversarial"]))) == {
        "complete": 1, "running": 0, "pending": 0, "failed": 0, "not_submitted": 0, "stopped": 4,
    }  # fmt: skip
    lam = {s.run_id: s.lam for s in specs}
    stopped = {lam[ln.split()[1].rstrip(":")]: ln.split()[-1] for ln in out.splitlines() if "halving stopped it" in ln}
    assert stopped == {0.3: "1", 3.0: "1", 10.0: "1", 0.1: "3"}  # TABLE: 0.1 and 1.0 pass epoch 1, 1.0 epoch 3


def test_packs_are_refused_on_the_k8s_backend_until_it_creates_pack_jobs(make_backend, k8s_overrides, capsys):
    from aal_k8s.cli import main

    argv = ["submit", "--stage", "single", "--dry-run", *_sets([*k8s_overrides, "executor.runs_per_job=4"])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("executor.runs_per_job=4: packs run on the local backend only so far; the k8s backend "
                            "creates one Job per run (set executor.runs_per_job=1)") and len(err) == 1  # fmt: skip

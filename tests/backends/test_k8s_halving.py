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

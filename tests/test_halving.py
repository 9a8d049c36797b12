"""λ by successive halving (aal_k8s.halving): the rule on hand-made scores, the store records, and
real tiny runs through the worker (resume from a rung, a crash between rungs)."""

from __future__ import annotations

import json

import pytest

from aal_k8s import halving
from aal_k8s.backends import SubmitReport, run_halving
from aal_k8s.config import load_config
from aal_k8s.errors import ConfigError
from aal_k8s.planner import plan_stage
from aal_k8s.reduce import reduce_experiment
from aal_k8s.report import render_report
from aal_k8s.store import ExperimentStore, LocalStore

PARTNERS = {"square": "red_tint", "ring": "blue_tint"}


def _cfg(tmp_path, *extra):
    lams = "adversarial.lambdas=[0.1, 0.3, 1.0, 3.0, 10.0]"
    return load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}", lams, *extra])


def _exp(cfg):
    return ExperimentStore(LocalStore(cfg.store.uri), cfg.experiment_name)


# -- the rule --------------------------------------------------------------------------------------
def test_decide_keeps_the_best_floor_n_over_eta_in_grid_order_ties_to_the_earlier_lambda():
    e = [{"lam": lam, "score": s} for lam, s in [(0.1, 0.70), (0.3, 0.80), (1.0, 0.75), (3.0, 0.80), (10.0, 0.60)]]
    assert halving.decide(e, eta=2) == [0.3, 3.0]  # 5 // 2 = 2 kept, returned in grid order
    assert halving.decide(e, eta=3) == [0.3]  # 0.3 and 3.0 tie at 0.80: the earlier lambda goes on
    assert halving.decide(e[:1], eta=3) == [0.1]  # never fewer than one


def test_score_at_a_rung_is_the_best_epoch_so_far_of_the_primary_heads():
    hist = [{"epoch": i + 1, "val_acc": {"a": v, "x": 0.0}} for i, v in enumerate([0.6, 0.8, 0.7, 0.9])]
    assert halving.score_at(hist, ("a",), 3) == 0.8  # epoch 4 is after the rung: not seen
    assert halving.score_at(hist[:2], ("a",), 3) is None  # has not reached the rung


@pytest.mark.parametrize("eta, rungs, epochs", [(2, [1, 3], 12), (3, [2], 14)])
def test_automatic_rungs_train_at_most_half_of_the_grid_epochs_for_5_lambdas(eta, rungs, epochs):
    assert halving.automatic_rungs(5, 6, eta) == rungs
    assert halving.run_epochs(5, 6, eta, rungs) == epochs <= 5 * 6 / 2  # grid: 5 lambdas x 6 epochs


class TableBackend:
    """Plays the worker from a hand-made metric table: a rung submission writes the rung record,
    a full one commits; counts the epochs it "trains" (no epoch twice, as the real worker)."""

    name = "table"

    def __init__(self, cfg, table, crash_at=(0, 0)):
        self.cfg, self.table, self.epochs, self.crash_at, self.calls = cfg, table, 0, crash_at, []
        self.trained_to: dict[str, int] = {}

    def submit(self, specs, exp, until_epoch=0):
        self.calls.append((until_epoch, sorted(s.lam for s in specs)))
        for i, s in enumerate(specs):
            if until_epoch and (until_epoch, i) == self.crash_at:
                raise KeyboardInterrupt  # the driver dies after i runs of this rung (i = all: before its decision)
            if halving.reached(exp, s.run_id, until_epoch) if until_epoch else exp.is_committed(s.run_id):
                continue  # as the real backends: judged by the store
            exp.write_spec(s)
            end = until_epoch or self.cfg.train.epochs
            self.epochs += end - self.trained_to.get(s.run_id, 0)
            self.trained_to[s.run_id] = end
            curve = self.table[s.primary[0]][s.lam]
            hist = [{"epoch": e, "val_acc": {s.primary[0]: curve[e - 1]}} for e in range(1, end + 1)]
            if until_epoch:
                halving.write_rung(exp, s.run_id, until_epoch, hist, float(end))
            else:
                best = max(hist, key=lambda h: h["val_acc"][s.primary[0]])  # the first best, as the trainer keeps it
                acc = {s.primary[0]: best["val_acc"][s.primary[0]]}
                exp.commit_run(s, {}, {"val_acc": acc, "test_acc": acc, "heads": s.heads, "history": hist,
                                       "best_epoch": best["epoch"], "timings": {"total": float(end)}})  # fmt: skip
        if until_epoch and (until_epoch, len(specs)) == self.crash_at:
            raise KeyboardInterrupt
        return SubmitReport(submitted=[s.run_id for s in specs])

    def wait(self, specs, exp, until_epoch=0):
        return {}  # submit ran everything; the decisions read the store


# val accuracy per epoch (6 epochs) of each lambda: square's best is 1.0 only when it survives
TABLE = {
    "square": {0.1: [.5, .6, .6, .6, .6, .6], 0.3: [.5, .7, .7, .7, .7, .7], 1.0: [.6, .6, .8, .9, .9, .9],
               3.0: [.4, .5, .5, .5, .5, .5], 10.0: [.3, .3, .3, .3, .3, .3]},
    "ring": {0.1: [.7] * 6, 0.3: [.6] * 6, 1.0: [.5] * 6, 3.0: [.8, .8, .8, .8, .8, .95], 10.0: [.8] * 6},
}  # fmt: skip


def _decisions(exp, cfg, specs):
    return {a: halving.summary(exp, b)["decisions"] for a, b in halving.brackets(cfg, specs).items()}


SINGLE = {"square": 0.80, "ring": 0.80, "h_stripes": 0.90, "cross": 0.90, "red_tint": 0.99, "blue_tint": 0.99}
PAIR = {("square", "red_tint"): 0.70, ("ring", "blue_tint"): 0.75}


def _discovered(cfg):
    """Hand-made single and pairwise runs: square's partner is red_tint, ring's blue_tint."""
    exp = _exp(cfg)
    for spec in plan_stage("single", cfg):
        a = spec.primary[0]
        exp.commit_run(spec, {}, {"val_acc": {a: SINGLE[a]}, "test_acc": {a: SINGLE[a]}, "heads": spec.heads})
    for spec in plan_stage("pairwise", cfg):
        a, b = spec.primary
        acc = {a: PAIR.get((a, b), SINGLE[a] + 0.01), b: PAIR.get((b, a), SINGLE[b] + 0.01)}
        exp.commit_run(spec, {}, {"val_acc": acc, "test_acc": acc, "heads": spec.heads})
    # label correlations give the correlation method the same partners (so the same adversarial runs)
    (multi,) = plan_stage("multi", cfg)
    idx = {a: i for i, a in enumerate(multi.heads)}
    corr = [[1.0 if i == j else 0.0 for j in range(6)] for i in range(6)]
    for a, b in PARTNERS.items():
        corr[idx[a]][idx[b]] = corr[idx[b]][idx[a]] = 0.5
    acc = {a: SINGLE[a] for a in multi.heads}
    exp.commit_run(multi, {}, {"val_acc": acc, "test_acc": acc, "heads": multi.heads, "label_corr": corr})
    partners = reduce_experiment(exp, cfg).partners
    assert {a: b for a, b in partners.items() if b} == PARTNERS
    return exp, plan_stage("adversarial", cfg, partners)


def test_decisions_on_a_hand_made_table_are_recorded_and_reduce_chooses_among_the_survivors(tmp_path):
    cfg = _cfg(tmp_path, "adversarial.lambda_search=halving", "adversarial.halving_eta=2")
    exp, specs = _discovered(cfg)
    backend = TableBackend(cfg, TABLE)
    report = run_halving(backend, exp, cfg, specs)
    assert not report.failed
    assert [(e, sorted(set(lams))) for e, lams in backend.calls] == [
        (1, [0.1, 0.3, 1.0, 3.0, 10.0]), (3, [0.1, 1.0, 3.0, 10.0]), (0, [1.0, 3.0])
    ]  # fmt: skip
    got = {a: [(d["epoch"], d["survivors"], d["stopped"]) for d in ds] for a, ds in _decisions(exp, cfg, specs).items()}
    assert got == {
        "square": [(1, [0.1, 1.0], [0.3, 3.0, 10.0]), (3, [1.0], [0.1])],  # 0.1 ties 0.3 at epoch 1: the earlier goes on
        "ring": [(1, [3.0, 10.0], [0.1, 0.3, 1.0]), (3, [3.0], [10.0])],
    }
    # the decision files are create-only JSON under halving/<attribute>/<bracket>/
    b = halving.brackets(cfg, specs)["square"]
    assert json.loads(exp.store.get_bytes(exp.key(*b.decision_parts(1))))["entrants"][2]["score"] == 0.6
    assert backend.epochs == halving.run_epochs(5, 6, 2, [1, 3]) * 2 == 24  # grid: 2 x 5 x 6 = 60

    out = reduce_experiment(exp, cfg)
    assert out.chosen_lambda == {"square": 1.0, "ring": 3.0}
    assert sorted(out.adversarial["square"]) == ["1.0"] and out.missing == {}  # stopped: not missing, by any method
    assert out.partner_sources["correlation"]["square"] == "red_tint"
    assert out.final["square"].source == "adversarial" and out.final["square"].lam == 1.0
    assert out.halving["ring"]["survivors"] == [3.0]
    assert out.stage_seconds["adversarial"] == 24.0  # the stopped runs' epochs count too
    assert "Lambda by successive halving" in render_report(out, "x").markdown
    rerun = TableBackend(cfg, TABLE)
    assert not run_halving(rerun, exp, cfg, specs).failed and rerun.epochs == 0  # all done: nothing trains


@pytest.mark.parametrize("trained", [0, 2, 4])
def test_a_crash_between_rungs_reaches_the_same_decisions(tmp_path, trained):
    ref_cfg = _cfg(tmp_path / "ref", "adversarial.lambda_search=halving", "adversarial.halving_eta=2")
    ref = _exp(ref_cfg)
    specs = [s for s in plan_stage("adversarial", ref_cfg, PARTNERS) if s.primary[0] in PARTNERS]
    run_halving(TableBackend(ref_cfg, TABLE), ref, ref_cfg, specs)

    cfg = _cfg(tmp_path / "crash", "adversarial.lambda_search=halving", "adversarial.halving_eta=2")
    exp = _exp(cfg)
    crashing = TableBackend(cfg, TABLE, crash_at=(3, trained))  # after rung 1's decision, `trained` of rung 3's 4 runs
    with pytest.raises(KeyboardInterrupt):
        run_halving(crashing, exp, cfg, specs)
    assert len(_decisions(exp, cfg, specs)["square"]) == 1
    resumed = TableBackend(cfg, TABLE)
    resumed.trained_to = dict(crashing.trained_to)
    assert not run_halving(resumed, exp, cfg, specs).failed
    assert 1 not in [e for e, _ in resumed.calls]  # rung 1 was decided before the crash: read back, not retaken
    assert _decisions(exp, cfg, specs) == _decisions(ref, ref_cfg, specs)
    assert crashing.epochs + resumed.epochs == 24  # no epoch trained twice


def test_bad_halving_settings_are_one_line_errors_naming_the_key(tmp_path):
    for extra, key in [
        ("adversarial.lambda_search=sometimes", "adversarial.lambda_search"),
        ("adversarial.halving_eta=1", "adversarial.halving_eta"),
        ("adversarial.halving_rungs=[3, 2]", "adversarial.halving_rungs"),
        ("adversarial.halving_rungs=[6]", "adversarial.halving_rungs"),
    ]:
        with pytest.raises(ConfigError) as e:
            _cfg(tmp_path, extra)
        assert key in str(e.value) and "\n" not in str(e.value).strip(), str(e.value)


# -- grid stays the default, and what it was --------------------------------------------------------
def test_grid_is_the_default_and_keeps_its_ids_submissions_and_outputs(tmp_path):
    from aal_k8s.cli.stages import execute_stage
    from aal_k8s.config import Config

    assert Config().adversarial.lambda_search == "grid"
    cfg = _cfg(tmp_path)
    exp, specs = _discovered(cfg)
    halv = _cfg(tmp_path, "adversarial.lambda_search=halving", "adversarial.halving_eta=2", "adversarial.halving_rungs=[2]")
    assert [s.run_id for s in plan_stage("adversarial", halv, PARTNERS)] == [s.run_id for s in specs]  # shared ids

    class Recording(TableBackend):
        def submit(self, specs, exp, until_epoch=0):
            self.calls.append(until_epoch)
            return SubmitReport()

    backend = Recording(cfg, TABLE)
    execute_stage(backend, exp, "adversarial", specs)
    assert backend.calls == [0]  # one submission of every run, no rung
    out = reduce_experiment(exp, cfg)
    assert out.halving == {} and "halving" not in out.to_json()  # summary.json as before halving existed
    assert "successive halving" not in render_report(out, "x").markdown


# -- real tiny runs through the worker ---------------------------------------------------------------
def _tiny(tmp_path, tiny_overrides, *extra):
    # lr decay at epoch 2 of 3: a rung at epoch 1 must stop and resume inside the full run's schedule
    over = [o for o in tiny_overrides if not o.startswith("store.uri")]
    return load_config(dataset="synthetic", overrides=[*over, f"store.uri={tmp_path}", "train.epochs=3",
                                                       "train.lr_decay_epoch=2", *extra])  # fmt: skip


def test_a_run_resumed_from_its_rung_ends_bitwise_as_the_uninterrupted_grid_run(tmp_path, tiny_overrides):
    from aal_k8s.worker import execute

    grid = _tiny(tmp_path / "grid", tiny_overrides)
    halv = _tiny(tmp_path / "halving", tiny_overrides, "adversarial.lambda_search=halving")
    spec = plan_stage("adversarial", halv, PARTNERS, attributes=["square"])[0]
    assert spec.run_id == plan_stage("adversarial", grid, PARTNERS, attributes=["square"])[0].run_id  # one id

    records = {}
    for cfg, rungs in ((grid, []), (halv, [1, 2])):
        exp = _exp(cfg)
        exp.write_spec(spec)
        for epoch in rungs:
            assert execute(cfg.store.uri, exp.experiment, spec.run_id, until_epoch=epoch) == 0
            assert not exp.is_committed(spec.run_id) and halving.read_rung(exp, spec.run_id, epoch)["epoch"] == epoch
        assert execute(cfg.store.uri, exp.experiment, spec.run_id) == 0
        records[bool(rungs)] = (exp.read_metrics(spec.run_id), exp.read_artifact(spec.run_id, "best.safetensors"))
    (a, wa), (b, wb) = records[False], records[True]
    assert wa == wb  # the best weights, bitwise
    assert b["environment"]["resumed_after_epoch"] == "2"  # no epoch trained twice
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert a["test_acc"] == b["test_acc"] and a["best_epoch"] == b["best_epoch"]


@pytest.mark.slow  # worker processes: about a minute on two shared cores
def test_halving_on_the_local_backend_decides_as_the_grid_runs_histories_say(tmp_path, tiny_overrides):
    """Worker processes through the local backend: each rung's decision is the one the grid runs'
    own histories give, and the survivor commits the grid run's result (same id, same bytes)."""
    from aal_k8s.backends.local import LocalBackend
    from aal_k8s.worker import execute

    lams = "adversarial.lambdas=[0.1, 1.0, 10.0]"
    halv = _tiny(tmp_path / "halving", tiny_overrides, lams, "adversarial.lambda_search=halving", "executor.parallel=1")
    grid = _tiny(tmp_path / "grid", tiny_overrides, lams)
    specs = plan_stage("adversarial", halv, PARTNERS, attributes=["square"])
    exp = _exp(halv)
    assert halving.rungs_for(halv) == [1]  # 3 lambdas, eta 3, 3 epochs: one rung, at epoch 1
    report = run_halving(LocalBackend(halv, progress=False), exp, halv, specs)
    assert not report.failed, report.failed
    (decision,) = _decisions(exp, halv, specs)["square"]
    assert len(decision["survivors"]) == 1 and len(exp.committed_ids()) == 1

    gexp = _exp(grid)
    for s in specs:
        gexp.write_spec(s)
        assert execute(grid.store.uri, gexp.experiment, s.run_id) == 0
    b = halving.brackets(grid, specs)["square"]
    assert halving.take_decision(gexp, b, 1, specs)["survivors"] == decision["survivors"]
    (winner,) = [s for s in specs if s.lam in decision["survivors"]]
    assert exp.read_artifact(winner.run_id, "best.safetensors") == gexp.read_artifact(winner.run_id, "best.safetensors")


def test_the_plan_counts_halvings_epochs_its_survivors_test_passes_and_a_fixed_cost_per_job(tmp_path):
    from aal_k8s.cost import build_plan
    from aal_k8s.errors import StageOrderError

    def waits_for_reduce(stage):
        raise StageOrderError("partners not known yet")

    rows = {}
    for search in ("grid", "halving"):
        cfg = load_config(dataset="celeba", overrides=[f"store.uri={tmp_path}", f"adversarial.lambda_search={search}"])
        rows[search] = build_plan(cfg, _exp(cfg), ["adversarial"], waits_for_reduce).stages[0]
    # h100-target: 12,000 train / 36,000 eval images/s, 30 s per Job; CelebA 162,770 / 19,867 / 19,962
    epoch = 162_770 / 12_000 + 19_867 / 36_000
    assert rows["grid"].seconds_per_run == pytest.approx(6 * epoch + 19_962 / 36_000 + 30)
    # eta 3, a rung at epoch 2: 5 x 2 + 1 x 4 = 14 epochs per attribute (not 30), one survivor
    # takes the test pass, and 5 Jobs to the rung + 1 after it pay the fixed cost 6 times (not 5)
    assert rows["halving"].seconds_per_run == pytest.approx((14 * epoch + 19_962 / 36_000 + 6 * 30) / 5)


def test_a_worker_killed_between_its_rung_checkpoint_and_record_records_the_rung_without_training(
    tmp_path, tiny_overrides, capsys
):
    import io

    from aal_k8s.worker import execute

    cfg = _tiny(tmp_path, tiny_overrides, "adversarial.lambda_search=halving")
    spec = plan_stage("adversarial", cfg, PARTNERS, attributes=["square"])[0]
    exp = _exp(cfg)
    exp.write_spec(spec)
    assert execute(cfg.store.uri, exp.experiment, spec.run_id, until_epoch=1) == 0
    first = halving.read_rung(exp, spec.run_id, 1)
    exp.store.delete(halving.rung_key(exp, spec.run_id, 1))  # as if killed right after the checkpoint
    log = io.StringIO()
    assert execute(cfg.store.uri, exp.experiment, spec.run_id, until_epoch=1, log=log) == 0
    assert "resuming after epoch 1" in log.getvalue() and " lr=" not in log.getvalue()  # no epoch trained
    assert halving.read_rung(exp, spec.run_id, 1)["history"] == first["history"]

"""Reduce on hand-made committed metrics (no training)."""

import pytest

from aal_k8s.config import load_config
from aal_k8s.planner import plan_stage
from aal_k8s.reduce import choose_lambda, matrix_csv, most_negative_partner, reduce_experiment
from aal_k8s.store import ExperimentStore, LocalStore

ATTRS = ["square", "ring", "h_stripes", "cross", "red_tint", "blue_tint"]
SINGLE = {"square": 0.80, "ring": 0.80, "h_stripes": 0.90, "cross": 0.90, "red_tint": 0.99, "blue_tint": 0.99}


def _commit(exp, spec, val: dict, test: dict | None = None):
    exp.commit_run(spec, {}, {"val_acc": val, "test_acc": test or val, "heads": spec.heads})


def _pair_acc(a, b):
    """Hand-made pairwise matrix: square hurt most by red_tint, ring by blue_tint (tied with cross)."""
    table = {("square", "red_tint"): 0.70, ("square", "ring"): 0.78, ("ring", "blue_tint"): 0.75, ("ring", "cross"): 0.75}
    return table.get((a, b), SINGLE[a] + 0.01)


@pytest.fixture
def filled(tmp_path):
    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}"])
    exp = ExperimentStore(LocalStore(str(tmp_path)), cfg.experiment_name)
    for spec in plan_stage("single", cfg):
        _commit(exp, spec, {spec.primary[0]: SINGLE[spec.primary[0]]})
    for spec in plan_stage("pairwise", cfg):
        a, b = spec.primary
        _commit(exp, spec, {a: _pair_acc(a, b), b: _pair_acc(b, a)})
    return cfg, exp


def test_partner_is_the_most_negative_and_none_when_nothing_drops(filled):
    cfg, exp = filled
    out = reduce_experiment(exp, cfg)
    assert out.partners["square"] == "red_tint"
    assert out.partners["h_stripes"] is None  # every pair is above single-task
    assert out.pair_val["square"]["red_tint"] == 0.70 and out.pair_val["red_tint"]["square"] == 1.0


def test_ties_go_to_the_lower_attribute_index(filled):
    cfg, exp = filled
    assert reduce_experiment(exp, cfg).partners["ring"] == "cross"  # cross (4) before blue_tint (6)


def test_matrix_csv_has_single_task_on_the_diagonal(filled):
    cfg, exp = filled
    rows = matrix_csv(reduce_experiment(exp, cfg)).splitlines()
    assert rows[0] == "attribute," + ",".join(ATTRS)
    cells = rows[1].split(",")
    assert cells[0] == "square" and float(cells[1]) == 0.80 and float(cells[5]) == 0.70


def test_partners_wait_for_every_single_and_pairwise_run(tmp_path):
    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}"])
    exp = ExperimentStore(LocalStore(str(tmp_path)), cfg.experiment_name)
    for spec in plan_stage("single", cfg):
        _commit(exp, spec, {spec.primary[0]: 0.8})
    out = reduce_experiment(exp, cfg)
    assert out.partners == {} and len(out.missing["pairwise"]) == 15


def test_lambda_chosen_on_val_and_final_choice(filled):
    cfg, exp = filled
    partners = reduce_experiment(exp, cfg).partners
    vals = {0.01: 0.79, 0.1: 0.83, 0.3: 0.83, 0.5: 0.81, 1.0: 0.60}  # 0.1 and 0.3 tie: first wins
    for spec in plan_stage("adversarial", cfg, partners):
        a = spec.primary[0]
        v = vals[spec.lam] if a == "square" else 0.70  # ring: adversarial worse than single
        _commit(exp, spec, {a: v, spec.auxiliary[0]: 0.5}, {a: v - 0.01, spec.auxiliary[0]: 0.5})
    out = reduce_experiment(exp, cfg)
    assert out.chosen_lambda["square"] == 0.1
    sq = out.final["square"]
    assert (sq.source, sq.partner, sq.lam, sq.val) == ("adversarial", "red_tint", 0.1, 0.83)
    assert out.final["ring"].source == "single"  # best_on_val never keeps a worse model
    assert out.final["h_stripes"].source == "single"  # no partner, no adversarial run
    paper = load_config(dataset="synthetic", overrides=[f"store.uri={exp.store.root}", "adversarial.final_selection=adversarial"])
    assert reduce_experiment(exp, paper).final["ring"].source == "adversarial"


def test_uncommitted_runs_are_invisible_and_listed_missing(filled):
    cfg, exp = filled
    spec = plan_stage("pairwise", cfg)[0]
    exp.store.delete(exp.run_key(spec.run_id, "metrics.json"))
    exp.store.put_bytes(exp.run_key(spec.run_id, "best.safetensors"), b"partial")
    out = reduce_experiment(exp, cfg)
    assert spec.run_id in out.missing["pairwise"] and out.partners == {}


def test_helpers_on_plain_values():
    assert most_negative_partner("a", 0.5, {"b": 0.5, "c": 0.6}, ["a", "b", "c"]) is None
    assert most_negative_partner("a", 0.5, {"b": 0.4, "c": 0.3}, ["a", "b", "c"]) == "c"
    assert choose_lambda({}) is None
    assert choose_lambda({0.5: {"val": 0.7}, 0.1: {"val": 0.7}}) == 0.5  # grid order, not value order


# -- partner sources, ablations, cost ------------------------------------------------------------
def _commit_all_heads(exp, spec, acc, **extra):
    vals = {h: acc for h in spec.heads}
    exp.commit_run(spec, {}, {"val_acc": vals, "test_acc": vals, "heads": spec.heads, "timings": {"total": 10.0}, **extra})


def _affinity_z():
    """z[i][j] = Z(i -> j): red_tint hurts square most, cross hurts ring, nothing hurts the rest."""
    z = [[0.01] * 6 for _ in range(6)]
    z[ATTRS.index("red_tint")][ATTRS.index("square")] = -0.30
    z[ATTRS.index("ring")][ATTRS.index("square")] = -0.10
    z[ATTRS.index("cross")][ATTRS.index("ring")] = -0.05
    return z


def _corr():
    r = [[1.0 if i == j else 0.0 for j in range(6)] for i in range(6)]
    for a, b, v in (("square", "red_tint", 0.9), ("ring", "blue_tint", -0.8), ("ring", "cross", 0.3)):
        i, j = ATTRS.index(a), ATTRS.index(b)
        r[i][j] = r[j][i] = v
    return r


@pytest.fixture
def with_affinity(filled):
    cfg, exp = filled
    (multi,) = plan_stage("multi", cfg)
    _commit_all_heads(exp, multi, 0.85, label_corr=_corr(), split_sizes={"train": 30, "val": 10, "test": 20})
    (aff,) = plan_stage("affinity", cfg)
    _commit_all_heads(exp, aff, 0.85, affinity={"tasks": ATTRS, "z": _affinity_z()}, timings={"total": 25.0})
    return cfg, exp


def test_three_partner_sources_from_pairwise_affinity_and_label_correlation(with_affinity):
    cfg, exp = with_affinity
    out = reduce_experiment(exp, cfg)
    src = out.partner_sources
    assert src["pairwise"]["square"] == "red_tint" and src["pairwise"]["ring"] == "cross"
    assert src["affinity"] == {"square": "red_tint", "ring": "cross", "h_stripes": None, "cross": None,
                               "red_tint": None, "blue_tint": None}  # fmt: skip
    assert out.affinity["square"]["red_tint"] == -0.30  # [a][b] = Z(b -> a)
    assert src["correlation"]["ring"] == "blue_tint"  # |r| = 0.8 beats 0.3, whatever the sign
    assert src["correlation"]["h_stripes"] is None  # uncorrelated with everything
    assert out.partners == src["pairwise"] and out.partners_from == "pairwise"


def test_partners_from_affinity_need_no_pairwise_stage(tmp_path):
    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}", "adversarial.partners_from=affinity"])
    exp = ExperimentStore(LocalStore(str(tmp_path)), cfg.experiment_name)
    for spec in plan_stage("single", cfg):
        _commit(exp, spec, {spec.primary[0]: SINGLE[spec.primary[0]]})
    (aff,) = plan_stage("affinity", cfg)
    _commit_all_heads(exp, aff, 0.85, affinity={"tasks": ATTRS, "z": _affinity_z()})
    out = reduce_experiment(exp, cfg)
    assert "pairwise" not in out.partner_sources and out.partners["square"] == "red_tint"
    assert len(out.missing["pairwise"]) == 15  # the paper's stage is still listed as not run
    assert len(plan_stage("adversarial", cfg, out.partners)) == 2 * len(cfg.adversarial.lambdas)


def test_adversarial_results_are_kept_per_partner_method(with_affinity):
    cfg, exp = with_affinity
    out = reduce_experiment(exp, cfg)
    for method, acc in (("pairwise", 0.81), ("correlation", 0.79)):
        for spec in plan_stage("adversarial", cfg, out.partner_sources[method], attributes=["ring"]):
            if not exp.is_committed(spec.run_id):
                _commit(exp, spec, {"ring": acc + spec.lam / 100, spec.auxiliary[0]: 0.5})
    out = reduce_experiment(exp, cfg)
    assert out.method_adversarial["pairwise"]["ring"]["partner"] == "cross"
    assert out.method_adversarial["correlation"]["ring"]["partner"] == "blue_tint"
    assert out.method_adversarial["correlation"]["ring"]["lam"] == 1.0
    assert out.chosen_lambda["ring"] == 1.0 and out.final["ring"].partner == "cross"
    assert "ring" in out.method_adversarial["affinity"]  # affinity also picks cross: the same runs


def test_ablations_group_partners_and_stage_seconds(with_affinity):
    cfg, exp = with_affinity
    out = reduce_experiment(exp, cfg)
    assert out.group_partners["square"] == ["ring", "red_tint"] and out.group_partners["h_stripes"] == []
    for spec in plan_stage("adversarial", cfg, out.partners):
        _commit_all_heads(exp, spec, 0.7 + spec.lam / 10)
    out = reduce_experiment(exp, cfg)
    for spec in plan_stage("gan", cfg, out.partners, lambdas=out.chosen_lambda, attributes=["square"]):
        _commit_all_heads(exp, spec, 0.77)
    groups = plan_stage("group", cfg, out.partners, lambdas=out.chosen_lambda, groups=out.group_partners)
    exp.write_spec(groups[0])  # submitted, never committed
    out = reduce_experiment(exp, cfg)
    assert out.ablations["gan"]["square"] == {
        "val": 0.77, "test": 0.77, "run_id": out.ablations["gan"]["square"]["run_id"], "auxiliary": ["red_tint"], "lam": 1.0,
    }  # fmt: skip
    assert "wgan" not in out.ablations and "wgan" not in out.missing  # never submitted: not run
    assert out.missing["group"] == [groups[0].run_id]  # submitted and not committed: listed
    assert out.stage_seconds["affinity"] == 25.0 and out.stage_runs["pairwise"] == 15
    assert out.stage_seconds["adversarial"] == 10.0 * 2 * len(cfg.adversarial.lambdas)
    assert out.eval_images == {"val": 10, "test": 20}


# -- the final comparison over seeds (stage seeds, --seeds N) ---------------------------------------
def test_seeds_pairs_each_seeds_final_kind_with_its_single_baseline_and_the_report_gives_an_interval(filled):
    from dataclasses import replace

    from aal_k8s.report.sections.significance import seed_comparison

    cfg, exp = filled
    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={exp.store.root}", "adversarial.seeds=3"])
    partners = reduce_experiment(exp, cfg).partners
    vals = {0.01: 0.79, 0.1: 0.83, 0.3: 0.83, 0.5: 0.81, 1.0: 0.60}
    for spec in plan_stage("adversarial", cfg, partners):
        a = spec.primary[0]
        v = vals[spec.lam] if a == "square" else 0.70  # square's final is adversarial at 0.1, ring's single
        _commit(exp, spec, {a: v, spec.auxiliary[0]: 0.5}, {a: v - 0.01, spec.auxiliary[0]: 0.5})
    out = reduce_experiment(exp, cfg)
    assert out.final_sources() == {a: "adversarial" if a == "square" else "single" for a in ATTRS}
    specs = plan_stage("seeds", cfg, out.partners, lambdas=out.chosen_lambda, finals=out.final_sources())
    # 2 more seeds x (6 single + square's adversarial run at the chosen lambda): ring has a partner
    # too, but its final classifier is its single-task run, so no adversarial replicate of ring
    assert len(specs) == 2 * (6 + 1) and {s.seed for s in specs} == {1, 2}
    adv = next(s for s in specs if s.mode == "adversarial" and s.primary == ("square",) and s.seed == 1)
    grid = plan_stage("adversarial", cfg, out.partners)
    assert replace(adv, stage="adversarial", seed=0).run_id in {s.run_id for s in grid}  # the same run, reseeded
    assert plan_stage("seeds", load_config(dataset="synthetic"), out.partners, lambdas=out.chosen_lambda, finals=out.final_sources()) == []
    for spec in specs:
        a, k = spec.primary[0], spec.seed
        if spec.mode == "single":
            test = SINGLE[a] - (0.03 if k == 2 else 0.0)
        else:  # only square's: 0.83 with seed 1, 0.80 with seed 2
            test = 0.83 if k == 1 else 0.80
        if (a, k, spec.mode) != ("blue_tint", 2, "single"):
            _commit(exp, spec, {h: test for h in spec.heads})
    out = reduce_experiment(exp, cfg)
    assert sorted(out.seeds) == ["0", "1"]  # seed 2 waits for blue_tint's baseline
    assert out.missing["seeds"] == [s.run_id for s in specs if (s.primary[0], s.seed, s.mode) == ("blue_tint", 2, "single")]
    assert out.seeds["1"]["square"] == {"final": 0.83, "single": 0.80}
    assert out.seeds["1"]["ring"] == {"final": 0.80, "single": 0.80}
    _commit(exp, next(s for s in specs if (s.primary[0], s.seed, s.mode) == ("blue_tint", 2, "single")), {"blue_tint": 0.96})
    out = reduce_experiment(exp, cfg)
    assert sorted(out.seeds) == ["0", "1", "2"] and "seeds" not in out.missing
    assert "seeds" in out.to_json() and "seeds" not in reduce_experiment(exp, load_config(
        dataset="synthetic", overrides=[f"store.uri={exp.store.root}"])).to_json()  # fmt: skip
    # final set per seed: 5.40 / 6, 5.41 / 6, 5.23 / 6 = 90.00, 90.17, 87.17 (mean 89.11, sd 1.686);
    # single-task 5.38 / 6, 5.38 / 6, 5.20 / 6 = 89.67, 89.67, 86.67 (mean 88.67, sd 1.732);
    # gains 0.33, 0.50, 0.50 points (mean 0.444, sd 0.0962); t(0.975, 2) = 4.303, half width t * sd / sqrt(3)
    table = seed_comparison(out)[-1]
    assert table.rows[0] == ["0", "90.00", "89.67", "+0.33"]
    assert table.rows[2] == ["2", "87.17", "86.67", "+0.50"]
    assert table.rows[-1] == ["mean over 3 seeds [95% interval]", "89.11 [84.92, 93.30]", "88.67 [84.36, 92.97]",
                              "+0.44 [+0.21, +0.68]"]  # fmt: skip
    out.seeds.pop("2"), out.seeds.pop("1")
    assert seed_comparison(out) == []  # one seed: no interval


def test_the_seed_interval_never_reaches_past_the_possible_accuracies():
    """Two seeds give t(0.975, 1) = 12.7: the interval is cut at 0% and 100% (and a gain at +-100 points)."""
    from aal_k8s.reduce import ReduceOutput
    from aal_k8s.report.sections.significance import seed_comparison

    out = ReduceOutput(dataset="synthetic", attributes=["square"])
    out.seeds = {"0": {"square": {"final": 0.99, "single": 0.60}}, "1": {"square": {"final": 0.90, "single": 0.99}}}
    mean = seed_comparison(out)[-1].rows[-1]
    # final: mean 94.5, sd 6.36, half width 12.706 * 6.36 / sqrt(2) = 57.2 -> [37.32, 151.7] uncut
    assert mean[1] == "94.50 [37.32, 100.00]"
    assert mean[2] == "79.50 [0.00, 100.00]"
    assert mean[3] == "+15.00 [-100.00, +100.00]"

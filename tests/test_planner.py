import pytest

from aal_k8s.config import load_config
from aal_k8s.data import attribute_names
from aal_k8s.errors import AALError, StageOrderError
from aal_k8s.planner import plan_stage


@pytest.fixture
def cfg():
    return load_config(dataset="synthetic")


def test_stage_counts_follow_the_protocol(cfg):
    m = len(attribute_names("synthetic"))
    lambdas = cfg.adversarial.lambdas
    partners = {a: b for a, b in zip(attribute_names("synthetic"), reversed(attribute_names("synthetic")))}
    assert len(plan_stage("single", cfg)) == m
    assert len(plan_stage("pairwise", cfg)) == m * (m - 1) // 2
    assert len(plan_stage("multi", cfg)) == 1
    assert len(plan_stage("adversarial", cfg, partners)) == m * len(lambdas)


def test_attributes_without_partner_get_no_adversarial_run(cfg):
    partners = {"square": "red_tint", "ring": None}
    specs = plan_stage("adversarial", cfg, partners)
    assert {s.primary for s in specs} == {("square",)}
    assert sorted(s.lam for s in specs) == sorted(cfg.adversarial.lambdas)
    assert all(s.auxiliary == ("red_tint",) and s.mode == "adversarial" for s in specs)


def test_adversarial_stage_needs_partners(cfg):
    with pytest.raises(StageOrderError, match="aal-k8s reduce"):
        plan_stage("adversarial", cfg)


def test_pairwise_runs_are_two_head_multi_runs_over_unordered_pairs(cfg):
    specs = plan_stage("pairwise", cfg)
    pairs = [frozenset(s.primary) for s in specs]
    assert len(set(pairs)) == len(pairs) and all(len(p) == 2 for p in pairs)
    assert all(s.mode == "multi" and not s.auxiliary for s in specs)


def test_run_ids_are_deterministic_short_and_distinct(cfg):
    specs = [*plan_stage("single", cfg), *plan_stage("pairwise", cfg), *plan_stage("multi", cfg)]
    again = [*plan_stage("single", cfg), *plan_stage("pairwise", cfg), *plan_stage("multi", cfg)]
    ids = [s.run_id for s in specs]
    assert ids == [s.run_id for s in again]
    assert len(set(ids)) == len(ids)
    assert all(len(i) <= 40 and i == i.lower() for i in ids)


def test_run_id_changes_with_hyperparameters_but_not_with_execution_settings():
    base = plan_stage("single", load_config(dataset="synthetic"))[0].run_id
    assert plan_stage("single", load_config(dataset="synthetic", overrides=["train.epochs=2"]))[0].run_id != base
    fast = load_config(dataset="synthetic", overrides=["train.threads=4", "train.device=cpu"])
    assert plan_stage("single", fast)[0].run_id == base


def test_subset_of_attributes(cfg):
    assert [s.primary for s in plan_stage("single", cfg, attributes=["ring"])] == [("ring",)]
    assert len(plan_stage("pairwise", cfg, attributes=["ring"])) == len(attribute_names("synthetic")) - 1


def test_unknown_stage_is_an_error(cfg):
    with pytest.raises(AALError, match="unknown stage 'triple'"):
        plan_stage("triple", cfg)

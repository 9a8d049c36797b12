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


# -- stages of the ablations and of partner discovery -------------------------------------------
PARTNERS = {"square": "red_tint", "ring": "blue_tint", "cross": None}
LAMBDAS = {"square": 0.1, "ring": 1.0}


@pytest.mark.parametrize(
    "stage, mode, options",
    [
        ("gan", "gan", {}),
        ("wgan", "wgan", {"clip": 0.01}),
        ("shared", "shared", {"hidden_layers": 2}),
    ],
)
def test_ablation_stages_train_one_run_per_attribute_at_its_chosen_lambda(cfg, stage, mode, options):
    specs = plan_stage(stage, cfg, PARTNERS, lambdas=LAMBDAS)
    assert [(s.primary, s.auxiliary, s.lam, s.mode) for s in specs] == [
        (("square",), ("red_tint",), 0.1, mode),
        (("ring",), ("blue_tint",), 1.0, mode),
    ]
    assert all(s.options == options for s in specs)


def test_shared_stage_starts_from_the_multi_run(cfg):
    multi = plan_stage("multi", cfg)[0].run_id
    assert {s.init_from for s in plan_stage("shared", cfg, PARTNERS, lambdas=LAMBDAS)} == {multi}
    assert all(s.init_from == "" for s in plan_stage("gan", cfg, PARTNERS, lambdas=LAMBDAS))


def test_group_stage_trains_against_every_negative_partner(cfg):
    groups = {"square": ["ring", "red_tint"], "ring": ["blue_tint"], "cross": []}
    specs = plan_stage("group", cfg, PARTNERS, lambdas=LAMBDAS, groups=groups)
    assert [(s.primary, s.auxiliary, s.mode) for s in specs] == [
        (("square",), ("ring", "red_tint"), "adversarial"),
        (("ring",), ("blue_tint",), "adversarial"),
    ]


@pytest.mark.parametrize("stage", ["gan", "wgan", "shared", "group"])
def test_ablation_stages_wait_for_the_chosen_lambdas(cfg, stage):
    with pytest.raises(StageOrderError, match="adversarial stage"):
        plan_stage(stage, cfg, PARTNERS, lambdas={"square": 0.1}, groups={"square": ["ring"]})
    with pytest.raises(StageOrderError, match="negative partners"):
        plan_stage(stage, cfg)


def test_affinity_stage_is_one_run_over_every_attribute_measuring_every_2m_steps(cfg):
    (spec,) = plan_stage("affinity", cfg)
    assert spec.mode == "affinity" and spec.primary == tuple(attribute_names("synthetic"))
    assert spec.options == {"every": 12, "window": 0, "measure_on": cfg.affinity.measure_on}
    assert spec.run_id.startswith("aff-k6-")
    custom = load_config(dataset="synthetic", overrides=["affinity.every=5", "affinity.window=3", "affinity.measure_on=train"])
    assert plan_stage("affinity", custom)[0].options == {"every": 5, "window": 3, "measure_on": "train"}


def test_ablation_settings_do_not_change_the_discovery_run_ids(cfg):
    """(The literal ids of every stage are pinned in tests/test_run_ids.py.)"""
    paper = [s.run_id for st in ("single", "pairwise", "multi") for s in plan_stage(st, cfg)]
    other = load_config(dataset="synthetic", overrides=["adversarial.wgan_clip=0.05", "affinity.every=3"])
    assert paper == [s.run_id for st in ("single", "pairwise", "multi") for s in plan_stage(st, other)]


def test_dann_schedule_is_part_of_the_adversarial_run_id(cfg):
    dann = load_config(dataset="synthetic", overrides=["adversarial.lambda_schedule=dann"])
    plain = plan_stage("adversarial", cfg, PARTNERS)
    ramped = plan_stage("adversarial", dann, PARTNERS)
    assert ramped[0].options == {"lambda_schedule": "dann", "dann_alpha": 10.0} and plain[0].options == {}
    assert {s.run_id for s in plain}.isdisjoint(s.run_id for s in ramped)

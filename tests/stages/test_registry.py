"""The stage registry (aal_k8s.stages): every stage list derives from it, a new stage is one
``Stage`` object, and each stage's typed options serialise to exactly the dict its run ids hash."""

from __future__ import annotations

import dataclasses

import pytest

from aal_k8s import paper, stages
from aal_k8s.config import load_config
from aal_k8s.errors import AALError, StageOrderError
from aal_k8s.modes import AdversarialOptions, options_of
from aal_k8s.planner import plan_stage
from aal_k8s.stages.base import ABLATION, LAMBDAS, PARTNERS, Stage, one_per_partner, schedule

PARTNERS_ = {"square": "red_tint", "ring": "blue_tint", "cross": None}
LAMBDAS_ = {"square": 0.1, "ring": 1.0}
GROUPS_ = {"square": ["ring", "red_tint"], "ring": ["blue_tint"]}
FINALS_ = dict.fromkeys(("square", "ring", "h_stripes", "cross", "red_tint", "blue_tint"), "adversarial")


def test_the_stage_lists_are_the_registrys_in_protocol_order():
    assert stages.STAGES == (
        "single", "pairwise", "multi", "affinity", "adversarial", "gan", "wgan", "shared", "group", "seeds",
    )  # fmt: skip
    assert stages.DISCOVERY_STAGES == ("single", "pairwise", "multi", "affinity")
    assert stages.ADVERSARIAL_STAGES == ("adversarial",)
    assert stages.ABLATION_STAGES == ("gan", "wgan", "shared", "group")
    assert stages.ALL_ATTRIBUTE_STAGES == ("multi", "affinity")
    assert stages.PAPER_STAGES == ("single", "pairwise", "multi", "adversarial")
    assert stages.ADVERSARIAL_MODES == ("adversarial", "gan", "wgan", "shared")
    assert [stages.tag(s) for s in stages.STAGES] == [
        "sin", "pair", "mul", "aff", "adv", "gan", "wgan", "shared", "group", "seed",
    ]  # fmt: skip


def test_every_table1_row_of_the_registry_has_the_papers_value_under_its_key():
    assert list(stages.TABLE1_LABELS) == ["single", "multi_all", "adversarial", "gan", "wgan", "shared", "group"]
    assert set(paper.TABLE1_CELEBA_VAL) == set(stages.TABLE1_LABELS)
    assert paper.table1_celeba_val("multi_all") == 92.34
    assert paper.table1_celeba_val("an_ablation_the_paper_never_ran") is None


def test_an_unknown_stage_is_one_line_naming_the_known_ones():
    with pytest.raises(AALError, match=r"unknown stage 'triple' \(known: single, pairwise, .*group, seeds\)"):
        stages.get("triple")


# A hypothetical new ablation, declared as its own module would declare it.
FOCAL = Stage(
    name="focal", tag="focal", mode="adversarial", phase=ABLATION, needs=(PARTNERS, LAMBDAS),
    plan=lambda inputs: one_per_partner(inputs, schedule(inputs.cfg)),
    table1_key="focal", label="Pairwise adversarial with a focal loss",
)  # fmt: skip


def test_a_new_ablation_is_planned_from_its_stage_object_alone(monkeypatch):
    monkeypatch.setitem(stages.BY_NAME, "focal", FOCAL)
    cfg = load_config(dataset="synthetic")
    specs = plan_stage("focal", cfg, PARTNERS_, lambdas=LAMBDAS_)
    assert [(s.stage, s.mode, s.primary, s.auxiliary, s.lam) for s in specs] == [
        ("focal", "adversarial", ("square",), ("red_tint",), 0.1),
        ("focal", "adversarial", ("ring",), ("blue_tint",), 1.0),
    ]
    assert specs[0].run_id.startswith("focal-a01-x05-")
    with pytest.raises(StageOrderError, match="stage focal runs at the lambda chosen .* none yet for ring"):
        plan_stage("focal", cfg, PARTNERS_, lambdas={"square": 0.1})
    with pytest.raises(StageOrderError, match="stage focal needs the negative partners"):
        plan_stage("focal", cfg)
    assert paper.table1_celeba_val(FOCAL.table1_key) is None  # the report shows no paper value, no KeyError


@pytest.mark.parametrize(
    "overrides",
    [[], ["adversarial.lambda_schedule=dann", "adversarial.dann_alpha=4", "affinity.measure_on=train", "affinity.every=3"]],
)
def test_every_stages_typed_options_round_trip_to_the_dict_its_run_ids_hash(overrides):
    cfg = load_config(dataset="synthetic", overrides=overrides)
    for name in stages.STAGES:
        for spec in plan_stage(name, cfg, PARTNERS_, lambdas=LAMBDAS_, groups=GROUPS_, finals=FINALS_):
            typed = options_of(spec.mode, spec.options, spec.run_id)
            assert type(typed) is not dict and typed.to_dict() == spec.options, name
            if isinstance(typed, AdversarialOptions):
                assert typed.lambda_schedule == cfg.adversarial.lambda_schedule
                assert typed.dann_alpha == (4.0 if overrides else None)


def test_options_a_spec_lacks_or_does_not_know_and_unknown_modes_are_one_line_errors():
    cfg = load_config(dataset="synthetic")
    (aff,) = plan_stage("affinity", cfg)
    lacking = {k: v for k, v in aff.options.items() if k != "measure_on"}
    with pytest.raises(AALError, match=rf"run {aff.run_id}: its spec's options lack 'measure_on'"):
        options_of("affinity", lacking, aff.run_id)
    with pytest.raises(AALError, match=r"run r: options clip are not options of AdversarialOptions"):
        options_of("gan", {"clip": 0.1}, "r")
    with pytest.raises(AALError, match=r"run r: unknown mode 'triple' \(known: single, multi, "):
        options_of("triple", {}, "r")
    with pytest.raises(AALError, match=r"run r: its spec's options lack 'dann_alpha'"):
        options_of("adversarial", {"lambda_schedule": "dann"}, "r")


def test_stage_objects_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        stages.get("single").tag = "s"  # type: ignore[misc]

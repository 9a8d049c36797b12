"""Golden run ids. Every committed run of every store is found by its id: an id that moves orphans
the run and it is trained again. These literals are the ids main produced before the identity was
made explicit (aal_k8s.runspec.RESULT_KEYS_V1); never update them to make a test pass."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest

import aal_k8s.config as config_module
from aal_k8s.config import Config, TrainConfig, load_config
from aal_k8s.data import attribute_names
from aal_k8s.planner import plan_stage
from aal_k8s.runspec import STAGES

# (first id of the stage, sha256 prefix of all its ids joined by spaces)
GOLDEN = {
    "synthetic": {
        "single": ("sin-a01-1022394b", "b0902016aa9a9711"),
        "pairwise": ("pair-a01-a02-2809a329", "c91f4dabe002bad0"),
        "multi": ("mul-k6-43fd3006", "970546752c984c3c"),
        "affinity": ("aff-k6-dd51e6e1", "3a0eaec708f1cbb3"),
        "adversarial": ("adv-a02-x03-05ff4cb8", "e7f4f018805d950d"),
        "gan": ("gan-a02-x03-c13ace53", "1ed321f8f1b4f82f"),
        "wgan": ("wgan-a02-x03-931bd5b4", "2ec93e1468bf00d2"),
        "shared": ("shared-a02-x03-c203012b", "a592a702df05663f"),
        "group": ("group-a02-x03-x04-bc5ed63f", "b140f8cc09014f94"),
    },
    "celeba": {
        "single": ("sin-a01-95135427", "9fa2e79b0bc22194"),
        "pairwise": ("pair-a01-a02-fbb24c50", "9b6341529b14c730"),
        "multi": ("mul-k40-4c6b10c5", "01f7cafc6377ebd4"),
        "affinity": ("aff-k40-69f3314e", "9d1b5c86354f9aca"),
        "adversarial": ("adv-a02-x03-ad6c18ca", "89e49ea73ae62131"),
        "gan": ("gan-a02-x03-4f834bfb", "41359fb21fe2a836"),
        "wgan": ("wgan-a02-x03-64f13d86", "1b5ad440ec81d783"),
        "shared": ("shared-a02-x03-a1b23e44", "68c517d354fe048e"),
        "group": ("group-a02-x03-x04-098531a5", "38d148a2f7474c16"),
    },
    "duke": {
        "single": ("sin-a01-1efb0819", "b0089a76506a0998"),
        "pairwise": ("pair-a01-a02-4fd533d0", "fefb39aa0d8d8ffe"),
        "multi": ("mul-k23-852a9f44", "97306f8ae235ae6c"),
        "affinity": ("aff-k23-f2d9b245", "af362240613e11e9"),
        "adversarial": ("adv-a02-x03-cac5ae7e", "b0898520bd98d942"),
        "gan": ("gan-a02-x03-5949e685", "5800dbca945abbc0"),
        "wgan": ("wgan-a02-x03-36d56931", "ee0c7151cfd14c1a"),
        "shared": ("shared-a02-x03-6775e43a", "ea0922cf8415af13"),
        "group": ("group-a02-x03-x04-447cb3da", "6d6ac819efdbd3e4"),
    },
}
# Non-default settings keep their ids too (dann schedule, wgan clip, affinity options; shorter training).
GOLDEN_SETTINGS = {
    # the seeds stage (--seeds 2): its own ids; the protocol's are the defaults' above
    ("adversarial.seeds=2",): {
        "single": "sin-a01-1022394b", "adversarial": "adv-a02-x03-05ff4cb8", "seeds": "seed-a01-1de525fb",
    },
    ("adversarial.lambda_schedule=dann", "adversarial.wgan_clip=0.05", "affinity.every=3",
     "affinity.measure_on=train"): {
        "affinity": "aff-k6-9d3cb493", "adversarial": "adv-a02-x03-fac04e77", "gan": "gan-a02-x03-49192cda",
        "wgan": "wgan-a02-x03-95a53f98", "shared": "shared-a02-x03-ec7da26c", "group": "group-a02-x03-x04-30a41954",
    },
    ("train.epochs=2", "dataset.synthetic.n_train=96", "dataset.augment.crop=1.0", "train.precision=fp32"): {
        "single": "sin-a01-fcea26e3", "pairwise": "pair-a01-a02-15e70dd9", "multi": "mul-k6-607ffbde",
        "affinity": "aff-k6-6771c370", "adversarial": "adv-a02-x03-ed11d06d", "shared": "shared-a02-x03-4df50177",
    },
}  # fmt: skip


def all_ids(cfg) -> dict[str, list[str]]:
    """Every stage's ids, the ablations with fixed partners, lambdas and groups."""
    names = attribute_names(cfg.dataset.name)
    partners = {a: names[(i + 1) % len(names)] if i % 3 else None for i, a in enumerate(names)}
    lambdas = {a: 0.1 for a in names}
    groups = {a: [names[(i + 1) % len(names)], names[(i + 2) % len(names)]] for i, a in enumerate(names)}
    finals = {a: "adversarial" for a in names}  # seeds then replicates every partnered attribute's run
    ids = {
        st: [s.run_id for s in plan_stage(st, cfg, partners, lambdas=lambdas, groups=groups, finals=finals)]
        for st in STAGES
    }
    return {st: v for st, v in ids.items() if v}  # seeds plans nothing with one seed (the default)


def digest(ids: list[str]) -> str:
    return hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16]


@pytest.mark.parametrize("dataset", sorted(GOLDEN))
def test_default_run_ids_of_every_stage_are_the_golden_ones(dataset):
    ids = all_ids(load_config(dataset=dataset))
    assert {st: (v[0], digest(v)) for st, v in ids.items()} == GOLDEN[dataset]


@pytest.mark.parametrize("overrides", sorted(GOLDEN_SETTINGS))
def test_run_ids_under_non_default_settings_are_the_golden_ones(overrides):
    ids = all_ids(load_config(dataset="synthetic", overrides=list(overrides)))
    assert {st: ids[st][0] for st in GOLDEN_SETTINGS[overrides]} == GOLDEN_SETTINGS[overrides]


# A result-changing config field added in some later version, with a default.
@dataclass
class TrainWithSmoothing(TrainConfig):
    label_smoothing: float = 0.0


@dataclass
class ConfigWithSmoothing(Config):
    train: TrainWithSmoothing = field(default_factory=TrainWithSmoothing)


def test_adding_a_config_field_with_a_default_changes_no_run_id(monkeypatch):
    before = all_ids(load_config(dataset="synthetic"))
    monkeypatch.setattr(config_module, "Config", ConfigWithSmoothing)
    grown = load_config(dataset="synthetic")
    assert grown.train.label_smoothing == 0.0
    assert all_ids(grown) == before
    # set to anything else, it is part of every id (a run that computes something else)
    smoothed = all_ids(load_config(dataset="synthetic", overrides=["train.label_smoothing=0.1"]))
    assert smoothed.keys() == before.keys() and all(set(smoothed[st]).isdisjoint(before[st]) for st in before)


def test_execution_settings_are_not_part_of_any_run_id():
    fast = ["train.device=cpu", "train.threads=3", "train.eval_batch_size=7", "train.heads_impl=reference",
            "train.compile=true", "dataset.root=/elsewhere", "dataset.pack=none", "dataset.workers=9",
            "dataset.cache_dir=/tmp/c", "dataset.pack_to=memory"]  # fmt: skip
    assert all_ids(load_config(dataset="celeba", overrides=fast)) == all_ids(load_config(dataset="celeba"))

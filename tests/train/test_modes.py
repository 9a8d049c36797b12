"""The loop's modes (aal_k8s.train.modes): every mode of aal_k8s.modes trains, and a spec whose mode
or options are wrong stops with one line naming the run before anything is built."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aal_k8s.errors import AALError
from aal_k8s.modes import MODE_OPTIONS, WganOptions
from aal_k8s.planner import plan_stage
from aal_k8s.train import mode_of, train_run
from aal_k8s.train.modes import MODES, Wgan


def test_every_mode_with_options_has_a_training_mode():
    assert set(MODES) == set(MODE_OPTIONS)


def test_an_unknown_mode_is_one_line_naming_the_run(tiny_cfg):
    spec = dataclasses.replace(plan_stage("single", tiny_cfg)[0], mode="triple")
    with pytest.raises(AALError, match=rf"^run {spec.run_id}: unknown mode 'triple' \(known: single, multi, "):
        train_run(spec, data=None)  # refused before the data is touched


def test_a_spec_missing_an_option_is_one_line_naming_the_run_and_the_option(tiny_cfg):
    spec = plan_stage("wgan", tiny_cfg, {"square": "red_tint"}, lambdas={"square": 0.5})[0]
    broken = dataclasses.replace(spec, options={})
    with pytest.raises(AALError, match=rf"^run {broken.run_id}: its spec's options lack 'clip'$"):
        train_run(broken, data=None)


def test_the_typed_options_reach_the_mode(tiny_cfg):
    from aal_k8s.config import load_config

    cfg = load_config(overrides=["adversarial.wgan_clip=0.03"], dataset="synthetic")
    spec = plan_stage("wgan", cfg, {"square": "red_tint"}, lambdas={"square": 0.5})[0]
    mode = mode_of(spec, torch.device("cpu"), "reference")
    assert isinstance(mode, Wgan) and mode.options == WganOptions("constant", None, clip=0.03)
    assert mode.lam == 0.5 and mode.lam_at(0.7) == 0.5

"""Issue 19: non-finite settings are refused before anything runs, and a run whose loss or weights
become NaN/inf stops with one line, exit 1, nothing committed."""

import io

import pytest

from aal_k8s.cli import main
from aal_k8s.config import load_config
from aal_k8s.errors import ConfigError


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=.inf", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.weight_decay=.inf", "train.weight_decay"),
        ("adversarial.lambdas=[0.1, .inf]", "adversarial.lambdas[1]"),
        ("adversarial.dann_alpha=.inf", "adversarial.dann_alpha"),
        ("store.read_timeout=.inf", "store.read_timeout"),
        ("k8s.cpu_request=.inf", "k8s.cpu_request"),
    ],
)
def test_every_non_finite_float_setting_is_refused_once_by_name(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert e.value.problems == [f"{key}: must be a finite number, got {'nan' if 'nan' in override else 'inf'}"]


def test_an_infinite_learning_rate_in_a_config_file_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("train:\n  lr: .inf\n")
    store = tmp_path / "store"
    assert main(["submit", "--stage", "single", "--config", str(cfg), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "aal-k8s: error: invalid config: train.lr: must be a finite number, got inf"
    assert not store.exists()


def test_a_diverging_run_stops_with_one_line_exit_1_and_commits_nothing(tiny_overrides, tmp_path):
    from aal_k8s.planner import plan_stage
    from aal_k8s.store import ExperimentStore, open_store
    from aal_k8s.worker import execute

    cfg = load_config(overrides=[*tiny_overrides, "train.lr=1.0e+30"], dataset="synthetic")
    spec = plan_stage("single", cfg, attributes=["square"])[0]
    exp = ExperimentStore(open_store(cfg.store.uri), cfg.experiment_name)
    exp.write_spec(spec)
    log = io.StringIO()
    assert execute(cfg.store.uri, cfg.experiment_name, spec.run_id, log=log) == 1
    assert f"run {spec.run_id}: training diverged in epoch 1: the loss of square is not finite" in log.getvalue()
    assert "Traceback" not in log.getvalue()
    assert not exp.is_committed(spec.run_id)
    assert not [k for k in exp.store.list(exp.key("runs", spec.run_id)) if "/checkpoints/" in k or k.endswith(".safetensors")]
    assert exp.read_failure(spec.run_id)["exit_code"] == 1

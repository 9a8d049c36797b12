"""The experiment is pinned in the store: later commands run with its config, drift is an error."""

import yaml

from aal_k8s.cli import main
from aal_k8s.config import load_config
from aal_k8s.planner import plan_stage
from aal_k8s.store import ExperimentStore, open_store


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def test_the_first_writing_command_pins_the_resolved_config_with_versions(tiny_overrides, tmp_path, capsys):
    assert main(["reduce", "-e", "exp1", *_sets(tiny_overrides)]) == 0
    record = yaml.safe_load((tmp_path / "store" / "exp1" / "experiment.yaml").read_text())
    assert record["experiment"] == "exp1"
    assert record["config"]["train"]["epochs"] == 2 and record["config"]["dataset"]["synthetic"]["n_train"] == 96
    assert record["config"]["model"]["backbone"] == "small_cnn"  # the preset, resolved
    assert record["aal_k8s_version"] and record["torch_version"] and record["overrides"] == []
    assert "store" not in record["config"] and "k8s" not in record["config"]


def test_a_result_changing_flag_is_a_one_line_error_naming_key_old_and_new_value(tiny_overrides, tmp_path, capsys):
    assert main(["reduce", *_sets(tiny_overrides)]) == 0
    summary = tmp_path / "store" / "synthetic" / "reduce" / "summary.json"
    before = summary.read_bytes()
    capsys.readouterr()
    code = main(["reduce", "--set", "train.epochs=6", "--set", "train.lr=0.01", "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "train.epochs 2 -> 6" in err and "train.lr 0.002 -> 0.01" in err and "--override-pinned" in err
    assert summary.read_bytes() == before


def test_execution_settings_and_repeated_flags_are_not_drift(tiny_overrides, capsys):
    assert main(["reduce", *_sets(tiny_overrides)]) == 0
    assert main(["reduce", *_sets(tiny_overrides), "--set", "train.threads=2", "--set", "dataset.workers=1"]) == 0


def test_read_only_commands_need_no_config_flags(tiny_overrides, tiny_cfg, tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["reduce", "-e", "exp1", *_sets(tiny_overrides)]) == 0
    cfg = load_config(overrides=[*tiny_overrides, "experiment=exp1"], dataset="synthetic")
    spec = plan_stage("single", cfg)[0]
    ExperimentStore(open_store(store), "exp1").commit_run(spec, {}, {"val_acc": {spec.primary[0]: 0.5}})
    capsys.readouterr()
    assert main(["status", "-e", "exp1", "--store", store, "--stage", "single"]) == 0
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("single")][0]
    assert row.split()[1:] == ["1", "0", "0", "0", "5", "0"]  # complete, running, pending, failed, not submitted, stopped


def test_override_pinned_applies_the_change_and_records_it(tiny_overrides, tmp_path, capsys):
    assert main(["reduce", *_sets(tiny_overrides)]) == 0
    assert main(["reduce", "--store", str(tmp_path / "store"), "--set", "train.epochs=3", "--override-pinned"]) == 0
    record = yaml.safe_load((tmp_path / "store" / "synthetic" / "experiment.yaml").read_text())
    assert record["config"]["train"]["epochs"] == 3
    [entry] = record["overrides"]
    assert entry["changes"] == {"train.epochs": {"old": 2, "new": 3}} and entry["at"]
    assert main(["reduce", "--store", str(tmp_path / "store")]) == 0  # the new pin holds


def test_switching_the_partner_method_chooses_other_runs_needs_no_override_and_is_recorded(tiny_overrides, tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["reduce", *_sets(tiny_overrides)]) == 0
    assert main(["reduce", "--store", store, "--partners-from", "correlation", "--set", "adversarial.min_drop=0.01"]) == 0
    record = yaml.safe_load((tmp_path / "store" / "synthetic" / "experiment.yaml").read_text())
    assert record["config"]["adversarial"]["partners_from"] == "correlation"
    [entry] = record["overrides"]
    assert entry["selection"] is True and entry["changes"] == {
        "adversarial.partners_from": {"old": "pairwise", "new": "correlation"},
        "adversarial.min_drop": {"old": 0.0, "new": 0.01},
    }
    summary = tmp_path / "store" / "synthetic" / "reduce" / "summary.json"
    assert main(["reduce", "--store", store]) == 0  # later commands follow the latest choice
    assert main(["reduce", "--store", store, "--seeds", "3"]) == 0  # more seeds add runs, change none
    assert yaml.safe_load(summary.read_text())["partners_from"] == "correlation"
    capsys.readouterr()
    # beside a key that changes what runs compute, only that key is refused and named
    assert main(["reduce", "--store", store, "--partners-from", "pairwise", "--set", "train.epochs=6"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs 2 -> 6" in err and "partners_from" not in err


def test_a_new_experiment_name_is_pinned_afresh(tiny_overrides, tmp_path, capsys):
    assert main(["reduce", *_sets(tiny_overrides)]) == 0
    assert main(["reduce", "-e", "longer", *_sets(tiny_overrides), "--set", "train.epochs=3"]) == 0
    record = yaml.safe_load((tmp_path / "store" / "longer" / "experiment.yaml").read_text())
    assert record["config"]["train"]["epochs"] == 3


def test_a_dry_run_pins_nothing(tmp_path, capsys):
    assert main(["submit", "--stage", "single", "--dry-run", "--store", str(tmp_path / "s")]) == 0
    assert not (tmp_path / "s").exists()


def test_an_experiment_from_before_pinning_is_not_pinned_with_flags_that_orphan_its_runs(
    tiny_overrides, tmp_path, capsys
):
    store = tmp_path / "store"
    assert main(["submit", "--stage", "single", "--attrs", "square", *_sets(tiny_overrides)]) == 0
    (store / "synthetic" / "experiment.yaml").unlink()  # as a store made before pinning existed
    capsys.readouterr()
    code = main(["reduce", *_sets(tiny_overrides), "--set", "train.epochs=3"])
    err = capsys.readouterr().err
    assert code == 2 and "has 1 committed runs and no experiment.yaml yet" in err and len(err.splitlines()) == 1
    assert not (store / "synthetic" / "experiment.yaml").exists() and not (store / "synthetic" / "reduce").exists()
    assert main(["reduce", *_sets(tiny_overrides)]) == 0  # the flags it was made with pin it
    assert (store / "synthetic" / "experiment.yaml").exists()

"""Real datasets on the command line: planning works offline, a missing dataset.root is one line
and exit 2 from submit (before anything is written) and from the worker."""

import json

from aal_k8s.cli import main
from aal_k8s.config import load_config
from aal_k8s.planner import plan_stage
from aal_k8s.store import ExperimentStore, LocalStore


def test_dry_run_plans_celeba_and_duke_without_the_data(tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["submit", "--stage", "single", "--dataset", "celeba", "--dry-run", "--store", str(store)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 40
    assert main(["submit", "--stage", "pairwise", "--dataset", "duke", "--dry-run", "--store", str(store)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 23 * 22 // 2
    assert not store.exists()


def test_submit_with_a_missing_root_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    store, missing = tmp_path / "store", tmp_path / "no" / "celeba"
    argv = ["submit", "--stage", "single", "--dataset", "celeba", "--attrs", "Smiling", "--store", str(store)]
    assert main([*argv, "--set", f"dataset.root={missing}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(missing) in err and "does not exist" in err
    assert main(argv) == 2  # root not set at all
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "dataset.root is not set" in err
    assert main(["pipeline", "--dataset", "duke", "--store", str(store), "--set", f"dataset.root={missing}"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not store.exists()


def test_worker_with_a_missing_root_exits_2_naming_the_path(tmp_path, capsys):
    store, missing = tmp_path / "store", tmp_path / "gone"
    cfg = load_config(dataset="celeba", overrides=[f"dataset.root={missing}", f"store.uri={store}"])
    spec = plan_stage("single", cfg, attributes=["Smiling"])[0]
    exp = ExperimentStore(LocalStore(str(store)), cfg.experiment_name)
    exp.write_spec(spec)
    assert main(["worker", "--store", str(store), "--experiment", "celeba", "--run", spec.run_id]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(missing) in last and "does not exist" in last
    failure = json.loads((store / "celeba" / "runs" / spec.run_id / "failure.json").read_text())
    assert failure["exit_code"] == 2 and str(missing) in failure["message"] and "\n" not in failure["message"]


def test_the_data_location_does_not_change_run_ids():
    a = load_config(dataset="celeba", overrides=["dataset.root=/a"])
    b = load_config(dataset="celeba", overrides=["dataset.root=/b", "dataset.pack=none", "dataset.workers=1"])
    assert [s.run_id for s in plan_stage("single", a)] == [s.run_id for s in plan_stage("single", b)]
    c = load_config(dataset="celeba", overrides=["dataset.augment.crop=0.8"])
    assert plan_stage("single", a)[0].run_id != plan_stage("single", c)[0].run_id

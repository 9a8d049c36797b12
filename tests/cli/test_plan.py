"""``aal-k8s plan`` and ``pipeline --dry-run``: runs, committed, hours from named rates, bytes, cost;
the k8s confirmation above plan.confirm_above_jobs."""

import io

import pytest

from aal_k8s.cli import main
from aal_k8s.config import load_config
from aal_k8s.cost import build_plan, confirm
from aal_k8s.errors import AALError
from aal_k8s.planner import plan_stage
from aal_k8s.store import ExperimentStore, open_store


def _row(out: str, stage: str) -> list[str]:
    return next(ln for ln in out.splitlines() if ln.split()[:1] == [stage]).split()


def test_plan_of_the_celeba_protocol_on_k8s_counts_runs_hours_bytes_egress_and_cost(tmp_path, capsys):
    store = tmp_path / "store"
    argv = ["plan", "--dataset", "celeba", "--backend", "k8s", "--store", str(store)]
    assert main([*argv, "--set", "plan.gpu_hour_price=2.5"]) == 0
    out = capsys.readouterr().out
    assert _row(out, "single")[1:4] == ["40", "0", "40"]
    assert _row(out, "pairwise")[1:4] == ["780", "0", "780"]
    assert _row(out, "adversarial")[1] == "<=200"
    total = _row(out, "total")
    # 1,021 runs x (6 x 162,770 / 12,000 + (6 x 19,867 + 19,962) / 36,000 + 30) s = 32.7 GPU-hours
    assert total[1] == "1021" and total[4] == "32.7"
    assert "NOT measured" in out and "device class h100-target" in out
    assert "cost: 81.72 for 32.7 GPU-h at 2.5 per GPU-hour" in out
    assert "23.6 GB pack, downloaded per run" in out and "k8s.cache_host_path" in out
    assert not store.exists()


def test_a_node_cache_makes_the_pack_one_download_per_node(tmp_path, capsys):
    argv = ["plan", "--dataset", "celeba", "--backend", "k8s", "--store", str(tmp_path)]
    assert main([*argv, "--set", "k8s.cache_host_path=/mnt/aal-cache"]) == 0
    out = capsys.readouterr().out
    assert "downloaded per node" in out and "every pod downloads" not in out


def test_committed_runs_calibrate_the_rates_and_count_as_committed(tiny_cfg, capsys):
    exp = ExperimentStore(open_store(tiny_cfg.store.uri), tiny_cfg.experiment_name)
    specs = plan_stage("single", tiny_cfg)
    for spec, seconds in zip(specs[:2], (10.0, 30.0)):
        exp.commit_run(spec, {}, {"timings": {"total": seconds}})
    p = build_plan(tiny_cfg, exp, ["single", "pairwise"], lambda st: plan_stage(st, tiny_cfg))
    single, pairwise = p.stages
    assert (single.runs, single.committed, single.to_run) == (6, 2, 4)
    assert single.seconds_per_run == pairwise.seconds_per_run == 20.0
    assert p.rates_source.startswith("calibration: 2 committed runs")
    assert p.hours(pairwise) == pytest.approx(15 * 20 / 3600)


def test_calibration_projects_what_a_run_cost_its_worker_process_with_meaningful_digits(tiny_overrides, capsys):
    cfg = load_config(overrides=tiny_overrides, dataset="synthetic")
    exp = ExperimentStore(open_store(cfg.store.uri), cfg.experiment_name)
    single = plan_stage("single", cfg)
    exp.commit_run(single[0], {}, {"timings": {"total": 0.2, "worker": 0.5, "process": 1.25}})
    exp.commit_run(single[1], {}, {"timings": {"total": 0.1, "worker": 0.4}})  # recorded before "process" was
    p = build_plan(cfg, exp, ["single"], lambda st: plan_stage(st, cfg))
    assert p.stages[0].seconds_per_run == pytest.approx((1.25 + 0.4) / 2)
    assert _row(p.render(), "single")[4] == "0.825"  # sub-second runs are not "0"
    assert "from worker process start to commit" in p.rates_source
    # on Kubernetes a Job also holds its GPU while the pod starts: added per Job, and named
    k8s = load_config(overrides=[*tiny_overrides, "executor.backend=k8s", "plan.pod_startup_seconds=20"],
                      dataset="synthetic")  # fmt: skip
    p = build_plan(k8s, exp, ["single"], lambda st: plan_stage(st, k8s))
    assert _row(p.render(), "single")[4] == "20.8"
    assert "plus 20 s of pod start-up per Job (plan.pod_startup_seconds)" in p.render()


def test_pipeline_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    assert main(["pipeline", "--dry-run", "--stages", "all", "--store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert _row(out, "total")[1] == "77" and "rates: device class" in out
    assert not [ln for ln in out.splitlines() if ln.startswith("seeds")]  # one seed: no empty stage row
    assert not (tmp_path / "s").exists()


def test_k8s_submission_above_the_threshold_asks_and_without_a_terminal_needs_yes():
    cfg = load_config(dataset="synthetic", overrides=["executor.backend=k8s", "plan.confirm_above_jobs=10"])

    class Plan15:
        jobs = 15

        def render(self):
            return "the plan\n"

    class Pipe(io.StringIO):
        def isatty(self):
            return False

    class Tty(io.StringIO):
        def isatty(self):
            return True

    with pytest.raises(AALError, match="15 Jobs to create, more than plan.confirm_above_jobs=10: pass --yes"):
        confirm(Plan15(), cfg, yes=False, stdin=Pipe(), stderr=io.StringIO())
    err = io.StringIO()
    confirm(Plan15(), cfg, yes=True, stdin=Pipe(), stderr=err)
    assert err.getvalue() == "the plan\n"  # shown, not asked
    err = io.StringIO()
    confirm(Plan15(), cfg, yes=False, stdin=Tty("y\n"), stderr=err)
    assert "the plan" in err.getvalue() and "create 15 Jobs? [y/N]" in err.getvalue()
    with pytest.raises(AALError, match="cancelled: no Jobs created"):
        confirm(Plan15(), cfg, yes=False, stdin=Tty("\n"), stderr=io.StringIO())
    local = load_config(dataset="synthetic", overrides=["plan.confirm_above_jobs=10"])
    confirm(Plan15(), local, yes=False, stdin=Pipe(), stderr=io.StringIO())  # local runs are not Jobs



def test_seeds_adds_the_seeds_stage_to_the_pipeline_and_its_bound_to_the_plan(tmp_path, capsys):
    argv = ["pipeline", "--dry-run", "--store", str(tmp_path / "s")]
    assert main(argv) == 0
    assert not any(ln.startswith("seeds") for ln in capsys.readouterr().out.splitlines())  # one seed: the protocol as it was
    assert main([*argv, "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    # partners not known yet: at most 2 more seeds x (6 single + 6 adversarial) runs
    assert _row(out, "seeds")[1:4] == ["<=24", "0", "24"]
    assert main([*argv, "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "adversarial.seeds: must be >= 1, got 0" in err and len(err.strip().splitlines()) == 1

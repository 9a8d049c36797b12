"""The live progress view: counts, run-seconds and ETA per stage from the backend and the store
(hand-made states and commit records), plain lines off a terminal, the rich table, `aal-k8s watch`."""

import io

import pytest
from rich.console import Console

from aal_k8s.backends import RunState
from aal_k8s.cli import main
from aal_k8s.config import load_config
from aal_k8s.planner import plan_stage
from aal_k8s.cli.progress import LiveView, Tracker, render
from aal_k8s.store import ExperimentStore, LocalStore


class FakeBackend:
    name = "local"

    def __init__(self, states: dict[str, RunState], exp):
        self._states, self._exp = states, exp

    def states(self, specs, exp):
        out = {}
        for s in specs:
            done = exp.is_committed(s.run_id)
            out[s.run_id] = RunState(s.run_id, "complete") if done else self._states.get(s.run_id, RunState(s.run_id, "not_submitted"))
        return out


@pytest.fixture
def scene(tmp_path):
    """single: 2 committed (10 s / 20 s wall, 14 s / 40 s wall), 1 running, 1 pending, 1 failed,
    1 not submitted; pairwise: 1 committed (5 s / 90 s wall), 14 not submitted; multi: nothing
    submitted; adversarial: needs reduce."""
    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}"])
    exp = ExperimentStore(LocalStore(str(tmp_path)), cfg.experiment_name)
    single = plan_stage("single", cfg)
    for spec, (total, wall) in zip(single, [(10.0, 20.0), (14.0, 40.0)]):
        exp.commit_run(spec, {}, {"timings": {"total": total, "worker": wall}})
    exp.commit_run(plan_stage("pairwise", cfg)[0], {}, {"timings": {"total": 5.0, "worker": 90.0}})
    states = {
        single[2].run_id: RunState(single[2].run_id, "running"),
        single[3].run_id: RunState(single[3].run_id, "pending", "Unschedulable"),
        single[4].run_id: RunState(single[4].run_id, "failed", "exit 1: CUDA out of memory"),
    }
    return cfg, exp, FakeBackend(states, exp), single


def test_counts_run_seconds_and_eta_per_stage(scene):
    cfg, exp, backend, single = scene
    p = Tracker(cfg, exp, backend, ["single", "pairwise", "multi", "adversarial"], slots=3).poll()
    s, pw, multi, adv = p.stages
    assert s.counts == {"complete": 2, "running": 1, "pending": 1, "failed": 1, "not_submitted": 1, "stopped": 0}
    assert s.run_seconds == 24.0
    assert s.eta_seconds == 3 * 30.0 / 1  # 3 left x the stage's mean wall 30 s / 1 running now
    assert pw.eta_seconds == 14 * 90.0 / 3  # its own mean; nothing running: 3 slots
    assert multi.eta_seconds == pytest.approx(1 * (20 + 40 + 90) / 3 / 3)  # nothing measured: every run's mean
    assert adv.waiting == "waits for reduce"
    assert p.eta_seconds == pytest.approx(90.0 + 420.0 + 50.0 / 3)
    assert p.slowest == [(plan_stage("pairwise", cfg)[0].run_id, 90.0), (single[1].run_id, 40.0), (single[0].run_id, 20.0)]
    assert p.failed == [(single[4].run_id, "exit 1: CUDA out of memory")]
    assert p.in_flight == 2


def test_watch_leaves_out_stages_not_started(scene):
    cfg, exp, backend, _ = scene
    p = Tracker(cfg, exp, backend, ["single", "pairwise", "multi", "adversarial"], started_only=True).poll()
    assert [s.stage for s in p.stages] == ["single", "pairwise"]


def test_off_a_terminal_each_change_is_one_plain_line(scene):
    cfg, exp, backend, single = scene
    out = io.StringIO()
    view = LiveView(Tracker(cfg, exp, backend, ["single", "adversarial"], slots=3), "t", stream=out, live=False)
    view.plain_every = 0.0
    view.update()
    view.update()  # nothing changed: nothing printed
    lines = [ln.split(" ", 1)[1] for ln in out.getvalue().splitlines()]
    assert lines == [
        "single: 2/6 complete, 1 running, 1 pending, 1 failed, 1 not submitted; 24 run-s; ETA 1:30",
        "adversarial: waits for reduce",
        f"failed {single[4].run_id}: exit 1: CUDA out of memory",
    ]
    exp.commit_run(single[2], {}, {"timings": {"total": 1.0, "worker": 30.0}})
    view.update()
    assert out.getvalue().splitlines()[-1].endswith("single: 3/6 complete, 0 running, 1 pending, 1 failed, 1 not submitted; 25 run-s; ETA 20s")


def test_plain_lines_of_a_stage_under_way_are_rate_limited(scene):
    cfg, exp, backend, single = scene
    out = io.StringIO()
    view = LiveView(Tracker(cfg, exp, backend, ["single"], slots=3), "t", stream=out, live=False)
    view.update()
    exp.commit_run(single[2], {}, {"timings": {"total": 1.0, "worker": 30.0}})
    view.update()  # changed, but within plain_every (30 s) of the last line
    assert len(out.getvalue().splitlines()) == 2  # the stage line and the failed run


def test_terminal_view_is_a_table_with_slowest_and_failed_runs(scene):
    cfg, exp, backend, single = scene
    p = Tracker(cfg, exp, backend, ["single", "adversarial"], slots=3).poll()
    console = Console(record=True, width=140, file=io.StringIO())
    console.print(render(p, "experiment synthetic (local)"))
    text = console.export_text()
    assert "experiment synthetic (local) (ETA 1:30)" in text
    row = [c for c in next(ln for ln in text.splitlines() if "2/6" in ln).split() if c != "│"]
    assert row[row.index("2/6") :] == ["2/6", "1", "1", "1", "1", "24", "1:30"]
    assert "waits for reduce" in text
    assert f"slowest: {single[1].run_id} (40s), {single[0].run_id} (20s)" in text  # of the stages shown
    assert f"failed {single[4].run_id}: exit 1: CUDA out of memory" in text


def test_watch_once_prints_plain_lines_and_exits_1_when_runs_failed(tmp_path, capsys):
    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}"])
    exp = ExperimentStore(LocalStore(str(tmp_path)), cfg.experiment_name)
    spec = plan_stage("single", cfg)[0]
    assert main(["watch", "--once", "--store", str(tmp_path)]) == 0  # nothing submitted: nothing shown
    assert capsys.readouterr().err == ""
    exp.write_spec(spec)
    exp.record_failure(spec.run_id, "ValueError: boom", 1)
    assert main(["watch", "--once", "--store", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "single: 0/6 complete, 0 running, 0 pending, 1 failed, 5 not submitted; 0 run-s; ETA ?" in err
    assert f"failed {spec.run_id}: ValueError: boom" in err


def test_watch_interval_must_be_positive(tmp_path, capsys):
    assert main(["watch", "--interval", "0", "--store", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "aal-k8s: error: --interval: must be > 0 seconds, got 0.0"

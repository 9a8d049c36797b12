"""The embedded default end to end: the planted pairs come out, and AAL beats single-task on them.

This is the README's first command with the default synthetic config (threads pinned to 1 so the
numbers do not depend on the machine's core count) and ``--stages all``: the paper's 42 runs, the
affinity run and the four ablation stages (16 runs), about ten minutes on two cores, so it is
marked slow; CI runs it.
"""

import json

import pytest

from aal_k8s.cli import main
from aal_k8s.data.synthetic import PLANTED

pytestmark = pytest.mark.slow


def test_pipeline_finds_the_planted_partners_and_adversarial_beats_single(tmp_path, capsys):
    store = tmp_path / "store"
    argv = ["pipeline", "--dataset", "synthetic", "--store", str(store), "-o", str(tmp_path / "report.md")]
    argv += ["--stages", "all", "--set", "train.threads=1"]
    assert main(argv) == 0
    summary = json.loads((store / "synthetic" / "reduce" / "summary.json").read_text())
    for a, b in PLANTED:
        assert summary["partners"][a] == b
        assert summary["partner_sources"]["affinity"][a] == b  # one run finds what 15 pairwise runs find
        for stage in ("gan", "wgan", "shared", "group"):
            assert a in summary["ablations"][stage], (stage, a)
        lam = summary["chosen_lambda"][a]
        adv_test = summary["adversarial"][a][repr(lam)]["test"]
        assert summary["pair_test"][a][b] < summary["single_test"][a] < adv_test, a
        assert summary["final"][a]["source"] == "adversarial"
    manifest = json.loads((store / "synthetic" / "final" / "manifest.json").read_text())
    assert [m["attribute"] for m in manifest["models"]] == summary["attributes"]
    report = (tmp_path / "report.md").read_text()
    assert "| 1 | square | 5 (red_tint) |" in report
    # one affinity run instead of 15 pairwise runs (its time against the multi run's:
    # benchmarks/bench_affinity.py, recorded in BENCHMARKS.md)
    assert summary["stage_runs"]["affinity"] == 1 and summary["stage_runs"]["pairwise"] == 15
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and summary["missing"] == {}

    capsys.readouterr()
    assert main(argv) == 0  # a re-run finds every run committed: no training
    err = capsys.readouterr().err
    for stage, n in (("single", 6), ("pairwise", 15), ("multi", 1), ("affinity", 1), ("adversarial", 20)):
        assert f"stage {stage}: {n} already complete, skipped" in err
    assert "it/s" not in err and "run/s" not in err  # no progress bar: nothing was executed
    assert (tmp_path / "report.md").read_text() == report
    assert (tmp_path / "report.html").read_text() == html  # byte-identical, figures included

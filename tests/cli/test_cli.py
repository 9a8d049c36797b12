"""The command line: bad input is one line and exit 2 with nothing written; finished runs are skipped."""

import json
import os

import pytest

from aal_k8s.cli import main


def _files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


BAD = [
    (["submit", "--stage", "single", "--attrs", "square,Smiling"], "unknown attribute(s) 'Smiling'"),
    (["submit", "--stage", "single", "--set", "train.epoch=3"], "train.epoch: unknown key"),
    (["submit", "--stage", "single", "--set", "train.epochs=-1"], "train.epochs: must be > 0"),
    (["submit", "--stage", "adversarial"], "needs the negative partners"),
    (["submit", "--stage", "triple"], "invalid choice: 'triple'"),
    (["final"], "no reduce output: run `aal-k8s reduce` first"),
    (["report"], "no reduce output"),
    (["pipeline", "--dataset", "mnist"], "dataset.name: 'mnist' is not one of"),
    (["pipeline", "--stages", "single,tripple"], "--stages: unknown stage(s) 'tripple'"),
    (["submit", "--stage", "gan"], "stage gan needs the negative partners (pairwise)"),
    (["submit", "--stage", "adversarial", "--partners-from", "affinity"], "run the affinity stage, then `aal-k8s reduce`"),
    (["reduce", "--partners-from", "votes"], "invalid choice: 'votes'"),
    (["submit", "--stage", "affinity", "--set", "affinity.every=-2"], "affinity.every: must be >= 0"),
]


@pytest.mark.parametrize("argv, fragment", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, fragment, tmp_path, capsys):
    store = tmp_path / "store"
    code = main([*argv, "--store", str(store)])
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not store.exists()


def test_malformed_yaml_is_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("train: [\n")
    assert main(["submit", "--stage", "single", "--config", str(cfg), "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "exp.yaml" in err and "not valid YAML" in err and len(err.strip().splitlines()) == 1


def test_argparse_errors_are_one_line_too(capsys):
    assert main(["submit", "--stage", "triple"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid choice" in err


def test_submit_twice_trains_once(tiny_overrides, tmp_path, capsys):
    argv = ["submit", "--stage", "single", "--attrs", "square", "--dataset", "synthetic"]
    argv += [x for o in tiny_overrides for x in ("--set", o)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 submitted, 0 already complete, 0 failed" in out
    store = tmp_path / "store"
    before = {f: os.path.getmtime(store / f) for f in _files(store)}
    assert main(argv) == 0
    assert "0 submitted, 1 already complete" in capsys.readouterr().out
    assert {f: os.path.getmtime(store / f) for f in _files(store)} == before
    [metrics] = [f for f in before if f.endswith("metrics.json")]
    record = json.loads((store / metrics).read_text())
    assert record["heads"] == ["square"] and "best.safetensors" in record["artifacts"]


def test_dry_run_lists_runs_and_writes_nothing(tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["submit", "--stage", "pairwise", "--dry-run", "--store", str(store)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 15 and all(ln.startswith("pair-") for ln in lines)
    assert not store.exists()


def test_status_counts_runs_per_stage(tiny_cfg, tiny_overrides, capsys):
    from aal_k8s.cli.common import experiment_store
    from aal_k8s.planner import plan_stage

    exp = experiment_store(tiny_cfg)
    single = plan_stage("single", tiny_cfg)
    for spec in single[:2]:  # two complete
        exp.write_spec(spec)
        exp.commit_run(spec, {"best.safetensors": b"w"}, {"heads": spec.heads})
    exp.record_failure(single[2].run_id, "out of memory", 1)  # one failed
    exp.record_failure(plan_stage("pairwise", tiny_cfg)[0].run_id, "evicted", 1)
    argv = ["status", "--dataset", "synthetic"] + [x for o in tiny_overrides for x in ("--set", o)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    table, failed = out.split("\n\n")
    rows = {ln.split()[0]: ln.split()[1:] for ln in table.splitlines()[2:]}
    # complete, running, pending, failed, not submitted, stopped (by halving)
    assert rows["single"] == ["2", "0", "0", "1", "3", "0"]
    assert rows["pairwise"] == ["0", "0", "0", "1", "14", "0"]
    assert rows["multi"] == ["0", "0", "0", "0", "1", "0"]
    assert rows["adversarial"] == ["(waits", "for", "reduce)"]
    assert f"single {single[2].run_id}: out of memory" in failed


def test_doctor_says_which_head_implementation_is_active(capsys):
    assert main(["doctor", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["active"].startswith(("fused", "reference"))
    assert main(["doctor"]) == 0
    assert "head implementation:" in capsys.readouterr().out


def test_affinity_then_adversarial_skips_the_pairwise_stage(tiny_overrides, tmp_path, capsys):
    argv = ["pipeline", "--dataset", "synthetic", "--stages", "single,multi,affinity,adversarial"]
    argv += ["--partners-from", "affinity", "-o", str(tmp_path / "r.md"), "--set", "adversarial.lambdas=[0.5]"]
    argv += [x for o in tiny_overrides for x in ("--set", o)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "stage pairwise" not in err and "stage affinity: 1 runs" in err
    summary = json.loads((tmp_path / "store" / "synthetic" / "reduce" / "summary.json").read_text())
    assert summary["partners_from"] == "affinity" and "pairwise" not in summary["partner_sources"]
    with_partner = [a for a, b in summary["partners"].items() if b]
    assert with_partner and sorted(summary["adversarial"]) == sorted(with_partner)
    assert {c["partner"] for c in summary["final"].values() if c["source"] == "adversarial"} <= set(summary["partners"].values())
    assert (tmp_path / "r.html").exists() and "Partners from: `affinity`" in (tmp_path / "r.md").read_text()

"""The report's opening (summary, provenance, title) and its λ table, on the hand-made sample
(tests/report_samples.py); expected numbers are worked out from the sample by hand."""

from report_samples import sample

from aal_k8s.reduce import Provenance, ReduceOutput
from aal_k8s.report import render_report


def _row(text: str, prefix: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(prefix))
    return [c.strip() for c in line.strip("|").split("|")]


def test_summary_says_what_improved_by_how_much_on_test_and_how_sure():
    out = sample()
    # final test: square .82, ring .79 (single), h_stripes .89, cross .895, red_tint .985, blue_tint .98
    # -> 89.33 %; single-task test: .79 .79 .89 .89 .98 .98 -> 88.67 %: +0.67 points
    out.paired_test = {"single": {"images": 64, "attributes": 6, "only_final": 9, "only_baseline": 1, "p": 0.021484375,
                                  "diff": 0.00667, "ci_low": 0.001, "ci_high": 0.0125}}  # fmt: skip
    out.partner_tests = {"ring": {"cross": {"drop": 0.05, "only_alone": 4, "only_with": 1, "p": 0.375}}}
    summary = render_report(out, "exp").markdown.split("\n\n")[1]
    assert summary == (
        "**Summary.** Final model set: mean test accuracy 89.33% over 6 attributes, +0.67 points over single-task "
        "training (95% bootstrap interval over test images [+0.10, +1.25]; McNemar p = 0.021484: significant at 0.05). "
        "4 of 6 attributes have a negative partner (pairwise; 1 of those drops not significant); 3 use their "
        "adversarial model in the final set. Validation chose partners, λ and epochs, so the test numbers are "
        "untouched by those choices."
    )


def test_summary_falls_back_to_the_z_test_without_predictions():
    summary = render_report(sample(), "exp").markdown.split("\n\n")[1]
    assert "+0.67 points over single-task training (the paper's z-test: p = " in summary


def test_summary_of_an_empty_experiment_says_there_is_no_result_yet():
    out = ReduceOutput(dataset="synthetic", attributes=["square", "ring"])
    assert "**Summary.** No complete result yet" in render_report(out, "exp").markdown


def test_provenance_names_code_data_config_and_dates():
    out = sample()
    out.provenance = Provenance(
        code="0.1.0 (git abc1234)",
        config={
            "dataset": {"seed": 0}, "model": {"backbone": "small_cnn", "pretrained": "none"},
            "train": {"lr": 0.002, "epochs": 6, "batch_size": 64},
            "adversarial": {"lambdas": [0.01, 0.1], "partners_from": "pairwise", "partner_test": "mcnemar",
                            "min_drop": 0.005, "final_selection": "best_on_val"},
        },
        split_sizes={"train": 3000, "val": 1000, "test": 2000},
        first_commit="2026-12-01T10:00:00Z", last_commit="2026-12-01T10:07:00Z",
    )  # fmt: skip
    para = next(p for p in render_report(out, "exp").markdown.split("\n\n") if p.startswith("**Provenance.**"))
    assert para == (
        "**Provenance.** Code: aal-k8s 0.1.0 (git abc1234). Data: synthetic, 3000 train / 1000 val / 2000 test images "
        "(seed 0). Config: small_cnn (none init), lr 0.002, 6 epochs, batch 64, λ grid [0.01, 0.1], partners from "
        "pairwise (test mcnemar, min drop 0.005), final selection best_on_val. Runs committed 2026-12-01T10:00:00Z to "
        "2026-12-01T10:07:00Z (UTC). The full config is `provenance.config` in `reduce/summary.json`."
    )


def test_no_provenance_paragraph_for_a_reduce_output_without_one():
    assert "**Provenance.**" not in render_report(sample(), "exp").markdown


def test_title_names_the_dataset_once_when_the_experiment_is_named_after_it():
    assert render_report(sample(), "synthetic").markdown.startswith("# AAL report: synthetic\n")
    assert render_report(sample(), "rerun").markdown.startswith("# AAL report: rerun (synthetic)\n")


def test_lambda_table_shows_every_runs_validation_accuracy_and_the_chosen_one_in_bold():
    md = render_report(sample(), "exp").markdown
    section = md[md.index("## Validation accuracy against λ") :]
    header = _row(section, "| # |")
    assert header[3:] == ["Single", "λ=0.01", "λ=0.1", "λ=0.3", "λ=0.5", "λ=1"]
    assert _row(section, "| 1 | square |")[3:] == ["80.00", "81.00", "**83.00**", "81.00", "81.00", "81.00"]
    assert _row(section, "| 5 | red_tint |")[3:] == ["99.00", "97.20", "97.20", "**99.20**", "97.20", ""]  # λ=1 failed


def test_reduce_records_code_version_result_config_split_sizes_and_commit_times(tmp_path, monkeypatch):
    import types

    import aal_k8s.store.layout as layout

    clock = iter(f"2026-12-01T10:0{i}:00Z" for i in range(9))  # one minute per commit
    monkeypatch.setattr(layout, "time", types.SimpleNamespace(strftime=lambda fmt, t: next(clock), gmtime=lambda: None))
    from aal_k8s.config import load_config
    from aal_k8s.planner import plan_stage
    from aal_k8s.reduce import reduce_experiment
    from aal_k8s.store import ExperimentStore, LocalStore
    from aal_k8s.version import code_version

    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}", "adversarial.min_drop=0.01"])
    exp = ExperimentStore(LocalStore(str(tmp_path)), cfg.experiment_name)
    for spec in reversed(plan_stage("single", cfg)):  # reduce reads the newest first: min/max, not first/last
        a = spec.primary[0]
        exp.commit_run(spec, {}, {"val_acc": {a: 0.9}, "test_acc": {a: 0.9}, "split_sizes": {"train": 30, "val": 10, "test": 20}})
    prov = reduce_experiment(exp, cfg).provenance
    assert prov.code == code_version() and prov.code.startswith("0.")
    assert sorted(prov.config) == ["adversarial", "affinity", "dataset", "model", "train"]  # no store, executor, k8s
    assert prov.config["adversarial"]["min_drop"] == 0.01
    assert prov.split_sizes == {"train": 30, "val": 10, "test": 20}
    assert (prov.first_commit, prov.last_commit) == ("2026-12-01T10:00:00Z", "2026-12-01T10:05:00Z")


def test_a_wgan_stage_never_run_has_no_ablation_row_but_a_note():
    md = render_report(sample(), "exp").markdown  # the sample has no wgan runs
    section = md[md.index("## Ablations") :]
    assert "| Pairwise adversarial with Wasserstein-GAN loss |" not in section
    assert "Not run: Pairwise adversarial with Wasserstein-GAN loss" in section


def _comparison_row(out, method):
    md = render_report(out, "exp").markdown
    return _row(md[md.index("## Partner discovery") :], f"| {method} |")


def test_a_method_whose_adversarial_runs_were_never_submitted_reads_not_run_not_missing():
    out = sample()  # correlation partners: square's coincides with pairwise (red_tint), its run exists
    out.method_adversarial["correlation"] = {"square": dict(out.method_adversarial["affinity"]["square"])}
    out.missing["adversarial"] = []  # no submitted adversarial run lacks its commit
    assert _comparison_row(out, "correlation")[3:5] == ["not run", "not run"]
    out.missing["adversarial"] = ["adv-red_tint-lam1"]  # submitted and not committed: really missing
    assert _comparison_row(out, "correlation")[3].startswith("missing (")


def test_training_curves_of_the_final_classifiers_mark_the_epoch_kept():
    out = sample()
    out.final_curves = {"square": {"val": [0.70, 0.83, 0.80], "best_epoch": 2}, "ring": {"val": [0.75, 0.80], "best_epoch": 2}}
    md = render_report(out, "exp").markdown
    section = md[md.index("## Training curves of the final classifiers") :]
    assert _row(section, "| 1 | square |")[2:] == ["adversarial", "70.00", "**83.00**", "80.00"]
    assert _row(section, "| 2 | ring |")[2:] == ["single", "75.00", "**80.00**", ""]


def test_reduce_keeps_the_final_runs_validation_curve(tmp_path):
    from aal_k8s.config import load_config
    from aal_k8s.planner import plan_stage
    from aal_k8s.reduce import reduce_experiment
    from aal_k8s.store import ExperimentStore, LocalStore

    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}"])
    exp = ExperimentStore(LocalStore(str(tmp_path)), cfg.experiment_name)
    for spec in plan_stage("single", cfg):
        a = spec.primary[0]
        history = [{"val_acc": {a: 0.6}}, {"val_acc": {a: 0.9}}, {"val_acc": {a: 0.8}}]
        exp.commit_run(spec, {}, {"val_acc": {a: 0.9}, "test_acc": {a: 0.9}, "history": history, "best_epoch": 2})
    for spec in plan_stage("pairwise", cfg):  # nothing drops: no partner, the final set is single-task
        exp.commit_run(spec, {}, {"val_acc": {h: 0.95 for h in spec.heads}, "test_acc": {h: 0.9 for h in spec.heads}})
    out = reduce_experiment(exp, cfg)
    assert out.final_curves["square"] == {"val": [0.6, 0.9, 0.8], "best_epoch": 2}

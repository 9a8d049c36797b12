"""The report on hand-made reduce outputs (see tests/report_samples.py for the numbers): exact cells,
means, counts, ablation states, CelebA-only sections, the partner comparison, significance,
missing runs, byte-identical re-renders, the HTML document and `aal-k8s report` on a store."""

import base64
import copy
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from report_samples import FAILED_ADV, FAILURE, celeba_like, sample

from aal_k8s.cli import main
from aal_k8s.config import load_config
from aal_k8s.reduce import ReduceOutput
from aal_k8s.report import render_report
from aal_k8s.store import ExperimentStore, LocalStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def rendered():
    return render_report(sample(), "exp")


@pytest.fixture(scope="module")
def md(rendered):
    return rendered.markdown


def _section(md: str, title: str) -> str:
    """The Markdown from the heading containing ``title`` to the next level-2 heading."""
    start = md.index(title)
    end = md.find("\n## ", start)
    return md[start : end if end >= 0 else len(md)]


def _row(md: str, first_cells: str) -> list[str]:
    """The cells of the table row that starts with ``first_cells``."""
    line = next(ln for ln in md.splitlines() if ln.startswith(first_cells))
    return [c.strip() for c in line.strip().strip("|").split("|")]


# -- the paper's Table 3 -----------------------------------------------------------------------------

TABLE3 = [
    (
        "validation",
        "| 1 | square | 5 (red_tint) | 80.00 | 70.00 | 83.00 | -10.00 | +3.00 | +13.00 | 0.1 | adversarial |",
    ),
    ("validation", "| 2 | ring | 4 (cross) | 80.00 | 75.00 | 79.00 | -5.00 | -1.00 | +4.00 | 0.3 | single |"),
    ("validation", "| 3 | h_stripes | none | 90.00 | 90.00 | 90.00 | +0.00 | +0.00 | +0.00 |  | single |"),
    (
        "validation",
        "| 5 | red_tint | 6 (blue_tint) | 99.00 | 98.50 | 99.20 | -0.50 | +0.20 | +0.70 | 0.3 | adversarial |",
    ),
    ("validation", "|  | **Mean** |  | 89.67 | 86.75 | 90.20 | -2.92 | +0.53 | +3.45 |  |  |"),
    ("test", "| 2 | ring | 4 (cross) | 79.00 | 74.00 | 78.50 | -5.00 | -0.50 | +4.50 | 0.3 | single |"),
    ("test", "| 4 | cross | 1 (square) | 89.00 | 87.00 | 89.50 | -2.00 | +0.50 | +2.50 | 0.5 | adversarial |"),
    ("test", "|  | **Mean** |  | 88.67 | 85.75 | 89.25 | -2.92 | +0.58 | +3.50 |  |  |"),
]


@pytest.mark.parametrize("split, line", TABLE3)
def test_table3_rows_and_mean_have_the_hand_computed_cells(md, split, line):
    title = "## Validation accuracy" if split == "validation" else "## Test accuracy"
    assert line in _section(md, title).splitlines()


def test_improvement_counts_over_single_and_multi(md):
    text = "Adversarial improved over single-task on 3 of 6 attributes, over multi-task with the partner on 4 of 6."
    assert text in _section(md, "## Validation accuracy") and text in _section(md, "## Test accuracy")


def test_mean_is_blank_while_an_attribute_has_no_adversarial_run():
    out = sample()
    del out.adversarial["cross"], out.chosen_lambda["cross"]
    line = next(ln for ln in render_report(out, "e").markdown.splitlines() if "| **Mean** |" in ln)
    assert line == "|  | **Mean** |  | 89.67 | 86.75 |  | -2.92 |  |  |  |  |"


# -- Table 1: ablations --------------------------------------------------------------------------------

ABLATIONS = [
    ("Single task per attribute", "89.67", "88.67", "complete"),
    ("Multi-task with all attributes", "89.87", "88.77", "complete"),
    ("Pairwise adversarial (gradient reversal)", "90.20", "89.25", "complete"),
    ("Pairwise adversarial with GAN loss", "", "", "missing (1 of 4 runs not committed)"),
    # attributes without a partner (h_stripes, blue_tint) count with single-task:
    # val (81 + 80 + 90 + 90 + 99 + 99) / 6, test one point lower each
    ("Pairwise adversarial with shared CNN representation", "89.83", "88.83", "complete"),
    ("Multiple adversarial attributes", "90.10", "89.10", "complete"),  # (81 + 81 + 90 + 90.5 + 99.1 + 99) / 6
]


@pytest.mark.parametrize("label, val, test, status", ABLATIONS, ids=[a[0] for a in ABLATIONS])
def test_ablation_rows_are_means_over_all_attributes_or_say_why_not(md, label, val, test, status):
    assert _row(_section(md, "## Ablations"), f"| {label} |") == [label, val, test, status]


def test_ablation_missing_counts_needed_runs_and_not_run_needs_no_entries():
    out = sample()
    del out.ablations["group"]["ring"]  # ring lowers cross and blue_tint: its run is needed
    out.ablations["wgan"] = {"square": {"val": 0.8, "test": 0.79, "run_id": "w", "auxiliary": [], "lam": 0.1}}
    md = render_report(out, "e").markdown
    assert _row(md, "| Multiple adversarial attributes |")[1:] == ["", "", "missing (1 of 4 runs not committed)"]
    assert _row(md, "| Pairwise adversarial with Wasserstein-GAN loss |")[3] == "missing (3 of 4 runs not committed)"
    out.group_partners = {"square": ["ring"]}  # only square needs a group run now
    assert _row(render_report(out, "e").markdown, "| Multiple adversarial attributes |")[3] == "complete"
    out.ablations = {}
    md = render_report(out, "e").markdown
    for stage in ("GAN loss", "Wasserstein-GAN loss", "shared CNN representation"):  # never run: no row
        assert f"| Pairwise adversarial with {stage} |" not in md
    assert "Not run: Pairwise adversarial with GAN loss; Pairwise adversarial with Wasserstein-GAN loss;" in md
    assert "Lipschitz by weight clipping" in md


# -- CelebA-only sections ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def celeba_md():
    return render_report(celeba_like(), "celeba-exp").markdown


def test_synthetic_has_no_celeba_sections_or_paper_column(md):
    assert "published CelebA" not in md and "Paper, CelebA val" not in md and "91.94" not in md


def test_celeba_shows_the_papers_tables_1_and_2_with_our_means(celeba_md):
    out = celeba_like()
    assert _row(celeba_md, "| Single task per attribute |")[3] == "92.33"
    assert _row(celeba_md, "| Multiple adversarial attributes |")[3] == "91.31"
    table2 = _section(celeba_md, "## Comparison with published CelebA")
    ours_test = sum(out.final[a].test for a in out.attributes) / 40
    single_test = sum(out.single_test.values()) / 40
    assert _row(table2, "| Ours |")[:3] == ["Ours", "91.94", f"{100 * ours_test:.2f}"]
    assert _row(table2, "| Single Task |")[:3] == ["Single Task", "91.73", f"{100 * single_test:.2f}"]
    for name, value in [("Sener & Koltun (2018)", "91.75"), ("He et al. (2017)", "91.80"), ("Lu et al. (2017)", "90.74"),
                        ("Hand & Chellappa (2017)", "91.26"), ("He et al. (2018)", "91.81"), ("Kalayeh et al. (2017)", "91.80"),
                        ("Multi Task", "91.79")]:  # fmt: skip
        assert _row(table2, f"| {name} |")[1] == value
    assert "CVPR 2017" in table2 and "ICLR 2020 submission" in table2


# -- partner discovery comparison ------------------------------------------------------------------


def _ranks(xs):
    """Average ranks (1-based), by hand."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _spearman_by_hand(xs, ys):
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return num / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def test_spearman_of_square_matches_the_hand_computation(md):
    # square's rows over (ring, h_stripes, cross, red_tint, blue_tint):
    pairwise = [-0.02, 0.01, 0.01, -0.10, 0.01]  # acc(square with b) - single(square)
    affinity = [-0.02, 0.01, 0.03, -0.05, 0.02]  # Z(b -> square)
    correlation = [-0.3, -0.0, -0.5, -0.6, -0.1]  # -|r(square, b)|
    rho_aff, rho_corr = _spearman_by_hand(affinity, pairwise), _spearman_by_hand(correlation, pairwise)
    assert rho_aff == pytest.approx(8 / math.sqrt(80)) and rho_corr == pytest.approx(6 / math.sqrt(80))
    row = _row(_section(md, "## Partner discovery"), "| 1 | square |")
    assert row == ["1", "square", "5 (red_tint)", "5 (red_tint)", "5 (red_tint)", f"{rho_aff:+.3f}", f"{rho_corr:+.3f}"]


def test_constant_rows_have_no_spearman(md):
    section = _section(md, "## Partner discovery")
    assert _row(section, "| 3 | h_stripes |")[2:] == [
        "none",
        "none",
        "4 (cross)",
        "n/a",
        "n/a",
    ]  # pairwise row constant
    assert _row(section, "| 6 | blue_tint |")[5:] == ["n/a", "n/a"]


def test_method_summary_agreement_rho_adversarial_and_cost(md):
    section = _section(md, "## Partner discovery")
    # affinity agrees on square, h_stripes (both none), cross, blue_tint (both none); correlation on
    # square, cross, red_tint. Mean rho over the 4 attributes with a non-constant pairwise row.
    rho_aff = (8 / math.sqrt(80) + _spearman_by_hand([0.01, 0.02, -0.01, 0.0, -0.03], [0.01, 0.01, -0.05, 0.01, -0.05])
               + _spearman_by_hand([-0.04, 0.01, 0.02, 0.0, 0.01], [-0.02, 0.01, 0.01, 0.01, 0.01]) - 1.0) / 4  # fmt: skip
    assert _row(section, "| pairwise |") == ["pairwise", "—", "—", "90.20", "89.25", "15", "300", "15.0"]
    assert _row(section, "| affinity |") == [
        "affinity",
        "4 of 6",
        f"{rho_aff:+.3f} (4 of 6)",
        "90.42",
        "89.33",
        "1",
        "30",
        "1.5",
    ]
    assert _row(section, "| correlation |")[:2] == ["correlation", "3 of 6"]
    assert _row(section, "| correlation |")[3:] == ["not run", "not run", "0", "0", "0.0"]
    assert "one ordinary run = the multi-task run, 20 s" in section
    assert "−|r(a, b)|" in section and "Z(b → a)" in section  # sign conventions are stated


@pytest.mark.parametrize(
    "sources, shown",
    [
        ({}, False),  # no source: no partners either (out.partners derives from partner_sources)
        ({"pairwise": "partners"}, False),
        ({"pairwise": "partners", "affinity": "affinity"}, True),
        ({"pairwise": "partners", "correlation": "correlation"}, True),
    ],
    ids=["none listed", "pairwise only", "pairwise + affinity", "pairwise + correlation"],
)
def test_comparison_is_shown_only_with_two_or_more_partner_sources(sources, shown):
    out = sample()
    full = out.partner_sources
    out.partner_sources = {m: full[m] for m in sources}
    md = render_report(out, "e").markdown
    assert ("## Partner discovery methods compared" in md) == shown
    assert "figures/affinity.png" in md  # the affinity heatmap stays whenever there is an affinity matrix


# -- significance --------------------------------------------------------------------------------


def test_significance_tests_the_final_model_set_against_every_baseline(md):
    section = _section(md, "## Statistical significance")
    p1 = (0.83 + 0.80 + 0.90 + 0.91 + 0.992 + 0.99) / 6
    p0 = (0.80 + 0.80 + 0.90 + 0.90 + 0.99 + 0.99) / 6
    z = (p1 - p0) * math.sqrt(384) / math.sqrt(p0 * (1 - p0))
    row = _row(section, "| val | Single task per attribute |")
    assert row[2:6] == [f"{100 * p1:.3f}", f"{100 * p0:.3f}", "384", f"{z:.2f}"] and row[7] == "no"
    assert _row(section, "| val | Multi-task with the most negative partner (Mul) |")[7] == "yes"
    baselines = [_row(section, ln)[1] for ln in section.splitlines() if ln.startswith("| test |")]
    assert baselines == [
        "Single task per attribute",
        "Multi-task with the most negative partner (Mul)",
        "Multi-task with all attributes",
        "Pairwise adversarial (gradient reversal)",
        "Pairwise adversarial with shared CNN representation",
        "Multiple adversarial attributes",
    ]  # GAN (missing) and WGAN (not run) have no value to test against
    assert "Ours (P1) = final model set" in section


def test_significance_is_na_without_image_counts_or_with_a_perfect_baseline():
    out = sample()
    out.eval_images = {}
    out.single_val = {a: 1.0 for a in out.attributes}
    section = _section(render_report(out, "e").markdown, "## Statistical significance")
    assert _row(section, "| val | Single task per attribute |")[4:] == ["n/a", "n/a", "n/a", "n/a"]
    out.eval_images = {"val": 64, "test": 64}
    section = _section(render_report(out, "e").markdown, "## Statistical significance")
    assert _row(section, "| val | Single task per attribute |")[4:] == ["384", "n/a", "n/a", "n/a"]  # P0 = 1


def test_without_a_final_model_set_ours_is_the_adv_column():
    out = sample()
    out.final = {}
    section = _section(render_report(out, "e").markdown, "## Statistical significance")
    assert "Ours (P1) = Adv column" in section
    assert _row(section, "| val | Pairwise adversarial (gradient reversal) |")[5:] == ["0.00", "1.000000", "no"]


# -- other sections --------------------------------------------------------------------------------


def test_missing_runs_lists_every_planned_stage_and_each_run_with_its_failure(md):
    section = _section(md, "## Missing runs")
    for stage in ("single", "pairwise", "multi", "affinity", "adversarial", "gan", "shared", "group"):
        assert f"| {stage} |" in section  # committed or missing runs
    for stage in ("wgan", "seeds"):  # neither in this sample: no row
        assert f"| {stage} |" not in section
    assert _row(section, "| adversarial |") == ["adversarial", "19", "1"]
    assert f"- adversarial: `{FAILED_ADV}` (failed: {FAILURE})" in section
    assert "- gan: `gan-red_tint` (not committed)" in section


def test_compute_per_stage_is_relative_to_the_multi_run(md):
    section = _section(md, "## Compute per stage")
    assert _row(section, "| pairwise |") == ["pairwise", "15", "300", "15.0"]
    assert _row(section, "| **Total** |") == ["**Total**", "53", "1120", "56.0"]


def test_correlation_section_reports_pearson_r_or_is_skipped_without_labels(md):
    import numpy as np

    out = sample()
    # the scatter computed here, not with figures.scatter_points/pearson: (label r, relative change %)
    xs, ys = [], []
    for a in out.attributes:
        for b in out.attributes:
            if b != a and b in out.label_corr.get(a, {}) and b in out.pair_val.get(a, {}):
                xs.append(out.label_corr[a][b])
                ys.append(100.0 * (out.pair_val[a][b] - out.single_val[a]) / out.single_val[a])
    r = np.corrcoef(xs, ys)[0, 1]
    assert len(xs) == 30 and f"Pearson r of the scatter: {r:.3f} over 30 ordered pairs" in md
    out.label_corr = {}
    md_empty = render_report(out, "e").markdown
    assert "Skipped: the reduce output has no label correlations" in md_empty
    assert "correlation_scatter.png" not in md_empty


def test_pairwise_csvs_are_relative_points_and_the_papers_table_4():
    rep = render_report(sample(), "e")
    rel, acc = rep.files["pairwise_relative.csv"].splitlines(), rep.files["pairwise_accuracy.csv"].splitlines()
    assert rel[0] == acc[0] == "attribute,square,ring,h_stripes,cross,red_tint,blue_tint"
    assert rel[1] == "square,,-2.0000,1.0000,1.0000,-10.0000,1.0000"
    assert acc[1] == "square,80.0000,78.0000,81.0000,81.0000,70.0000,81.0000"
    assert rel[3] == "h_stripes,1.0000,1.0000,,1.0000,1.0000,1.0000"  # blank diagonal
    assert rel[5] == "red_tint,1.0000,1.0000,1.0000,1.0000,,-0.5000"
    assert "`pairwise_relative.csv`" in rep.markdown


def test_an_early_reduce_output_renders_with_notes_instead_of_sections():
    out = ReduceOutput(
        dataset="synthetic",
        attributes=["square", "ring", "cross"],
        single_val={"square": 0.8},
        single_test={"square": 0.79},
    )
    out.missing = {"single": ["s2", "s3"]}
    rep = render_report(out, "early")
    assert "No pairwise run is committed yet." in rep.markdown
    assert _row(rep.markdown, "| Single task per attribute |")[3] == "missing (2 of 3 runs not committed)"
    assert "| Pairwise adversarial (gradient reversal) |" not in rep.markdown  # not run: a note, no row
    assert "Skipped: our method has no complete result yet" in rep.markdown
    assert list(rep.figures) == ["accuracy_bars"] and rep.html.endswith("</html>\n")


def test_the_markdown_draws_no_figure(monkeypatch):
    import aal_k8s.report.figures as figures

    def no_drawing(*args):
        raise AssertionError("a figure was drawn for the Markdown")

    monkeypatch.setattr(figures, "_render", no_drawing)
    rep = render_report(sample(), "exp")
    md = rep.markdown  # links every figure without drawing one (`aal-k8s report` draws them once, for the store)
    assert all(f"figures/{name}.png" in md for name in figures.FIGURES)
    with pytest.raises(AssertionError, match="was drawn"):
        rep.figures


# -- determinism, HTML, Markdown --------------------------------------------------------------------


def test_rendering_twice_gives_identical_bytes(rendered):
    again = render_report(sample(), "exp")
    assert again.markdown == rendered.markdown and again.html == rendered.html
    assert again.figures == rendered.figures and again.files == rendered.files
    assert render_report(sample(), "exp").markdown == rendered.markdown


def test_a_fresh_interpreter_renders_identical_bytes(rendered, tmp_path):
    script = (
        "import sys; from report_samples import sample; from aal_k8s.report import render_report\n"
        "r = render_report(sample(), 'exp')\n"
        "open(sys.argv[1] + '/report.md', 'w').write(r.markdown); open(sys.argv[1] + '/report.html', 'w').write(r.html)\n"
        "for k, v in r.figures.items(): open(sys.argv[1] + '/' + k + '.png', 'wb').write(v)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), "PYTHONHASHSEED": "7"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env, cwd=str(tmp_path), timeout=120)
    assert (tmp_path / "report.md").read_text() == rendered.markdown
    assert (tmp_path / "report.html").read_text() == rendered.html
    for name, png in rendered.figures.items():
        assert (tmp_path / f"{name}.png").read_bytes() == png, name


class _Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.srcs, self.hrefs, self.tags = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if "src" in attrs:
            self.srcs.append(attrs["src"])
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_html_is_one_standalone_document_with_every_figure_inline(rendered):
    doc = rendered.html
    assert doc.startswith('<!DOCTYPE html>\n<html lang="en">')
    checker = _Checker()
    checker.feed(doc)
    assert checker.errors == [] and checker.stack == []
    assert checker.tags.count("html") == checker.tags.count("body") == checker.tags.count("title") == 1
    assert all(h.startswith("#") for h in checker.hrefs)  # nothing external
    assert all(s.startswith("data:image/png;base64,") for s in checker.srcs)
    pngs = [base64.b64decode(s.split(",", 1)[1]) for s in checker.srcs]
    assert sorted(pngs) == sorted(rendered.figures.values()) and len(pngs) == 4


def test_html_escapes_text_and_markdown_links_the_figures(rendered):
    assert "worker &lt;pod-3&gt; killed: OOM &amp; exit 137" in rendered.html and "<pod-3>" not in rendered.html
    assert "<strong>Mean</strong>" in rendered.html and "<code>pairwise</code>" in rendered.html
    for name in rendered.figures:
        assert re.search(rf"!\[[^\]]+\]\(figures/{name}\.png\)", rendered.markdown)
    assert "data:image" not in rendered.markdown


def test_html_shows_store_text_literally_with_the_entities_html_escape_writes():
    out = sample()  # a failure message is text from a pod: no link, no raw HTML, quotes as before (&#x27;)
    out.failed[FAILED_ADV] = "pod 'x' said \"no\" <b>[see](http://x) & retry"
    item = (
        "<li>adversarial: <code>adv-red_tint-lam1</code> (failed: pod &#x27;x&#x27; said &quot;no&quot; "
        "&lt;b&gt;[see](http://x) &amp; retry)</li>"
    )
    html = render_report(out, "o'neil & <co>").html
    assert item in html
    assert "<title>AAL report: o&#x27;neil &amp; &lt;co&gt; (synthetic)</title>" in html  # escaped once, not twice
    assert 'alt="Affinity Z(b → a): row a, column b; blue: a step on b&#x27;s loss' in html


def test_a_table_without_rows_keeps_its_blank_body_line():
    out = sample()
    out.halving = {"square": {"rungs": [1], "eta": 2, "decisions": [], "survivors": None}}
    html = render_report(out, "e").html
    body = html[html.index('id="lambda-by-successive-halving"') :]
    assert "<tbody>\n\n</tbody>" in body[: body.index("</table>")]


# -- aal-k8s report --------------------------------------------------------------------------------


def test_cli_report_writes_markdown_html_figures_and_csv_locally_and_to_the_store(tmp_path, capsys):
    store = tmp_path / "store"
    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={store}"])
    exp = ExperimentStore(LocalStore(str(store)), cfg.experiment_name)
    exp.put_sealed("reduce", "summary.json", obj=sample().to_json(), field="summary_sha256")
    local = tmp_path / "out" / "my-report.md"
    local.parent.mkdir()
    argv = ["report", "--dataset", "synthetic", "--store", str(store), "--output", str(local)]
    assert main(argv) == 0
    assert str(tmp_path / "out" / "my-report.html") in capsys.readouterr().out
    assert sorted(os.listdir(local.parent)) == ["my-report.html", "my-report.md"]
    keys = exp.store.list(exp.key("report"))
    names = sorted(k.split("/report/", 1)[1] for k in keys)
    assert names == [
        "figures/accuracy_bars.png", "figures/affinity.png", "figures/correlation_scatter.png",
        "figures/pairwise_relative.png", "pairwise_accuracy.csv", "pairwise_relative.csv", "report.html", "report.md",
    ]  # fmt: skip
    md = exp.store.get_bytes(exp.key("report", "report.md"))
    assert md == local.read_bytes() and b"| 1 | square | 5 (red_tint) |" in md
    assert exp.store.get_bytes(exp.key("report", "report.html")) == (tmp_path / "out" / "my-report.html").read_bytes()
    before = {k: exp.store.get_bytes(k) for k in keys}
    assert main(argv) == 0  # re-run: same bytes everywhere
    assert {k: exp.store.get_bytes(k) for k in keys} == before
    assert local.read_bytes() == md


def test_cli_report_without_output_writes_only_to_the_store(tmp_path, monkeypatch):
    store = tmp_path / "store"
    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={store}"])
    exp = ExperimentStore(LocalStore(str(store)), cfg.experiment_name)
    out = copy.deepcopy(sample())
    out.label_corr, out.affinity, out.partner_sources = {}, {}, {}
    exp.put_sealed("reduce", "summary.json", obj=out.to_json(), field="summary_sha256")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["report", "--dataset", "synthetic", "--store", str(store)]) == 0
    assert os.listdir(work) == []
    assert exp.store.exists(exp.key("report", "report.html"))
    assert not exp.store.exists(exp.key("report", "figures", "affinity.png"))


def test_every_template_is_shipped_as_package_data():
    """A template missing from pyproject's package-data is absent from the wheel (and the image)."""
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    globs = tomllib.loads(Path(ROOT, "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["aal_k8s.report"]
    package = Path(ROOT, "aal_k8s", "report")
    templates = [p.relative_to(package).as_posix() for p in (package / "templates").iterdir()]
    assert templates and all(any(fnmatch.fnmatch(t, g) for g in globs) for t in templates), (templates, globs)

"""The report's trust sections: partners whose drop is not significant are marked, the paired
tests of the final set on test are shown, and the final set is never compared with itself."""

from report_samples import sample

from aal_k8s.report import render_report


def _section(md: str, title: str) -> str:
    start = md.index(title)
    end = md.find("\n## ", start + 1)
    return md[start : end if end >= 0 else len(md)]


def _row(text: str, prefix: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(prefix))
    return [c.strip() for c in line.strip("|").split("|")]


def _tested():
    out = sample()  # partners: square <- red_tint, ring <- cross
    out.partner_tests = {
        "square": {"red_tint": {"drop": 0.175, "only_alone": 12, "only_with": 5, "p": 0.143463134765625}},
        "ring": {"cross": {"drop": 0.15, "only_alone": 6, "only_with": 0, "p": 0.03125}},
    }
    return out


def test_a_partner_whose_drop_is_not_significant_is_marked_in_table_3():
    md = render_report(_tested(), "exp").markdown
    table = _section(md, "## Validation accuracy")
    assert _row(table, "| 1 | square |")[2] == "5 (red_tint) †"
    assert _row(table, "| 2 | ring |")[2] == "4 (cross)"  # significant: unmarked


def test_partner_drops_section_lists_lost_and_gained_images_with_mcnemar_p():
    section = _section(render_report(_tested(), "exp").markdown, "## Partner drops")
    assert _row(section, "| 1 | square |")[3:] == ["17.50", "12", "5", "0.143463", "no †"]
    assert _row(section, "| 2 | ring |")[3:] == ["15.00", "6", "0", "0.031250", "yes"]
    assert "1 of 2 partners' drops are not significant" in section
    assert "`adversarial.partner_test: none`" in section and "any drop, the paper's rule" in section


def test_without_per_image_predictions_nothing_is_marked():
    md = render_report(sample(), "exp").markdown
    assert "## Partner drops" not in md and "†" not in md and "Paired tests" not in md


def test_paired_tests_on_test_images_sit_beside_the_z_test():
    out = sample()
    out.paired_test = {
        "single": {"images": 64, "attributes": 6, "only_final": 10, "only_baseline": 2, "p": 0.0386,
                   "diff": 8 / 384, "ci_low": 0.005, "ci_high": 0.0365},
        "multi_all": {"images": 64, "attributes": 6, "only_final": 3, "only_baseline": 3, "p": 1.0,
                      "diff": 0.0, "ci_low": -0.01, "ci_high": 0.01},
    }  # fmt: skip
    section = _section(render_report(out, "exp").markdown, "## Statistical significance")
    paired = section[section.index("### Paired tests on the test images") :]
    assert _row(paired, "| Single task per attribute |")[1:] == ["+2.08", "[+0.50, +3.65]", "10", "2", "0.038600", "yes"]
    assert _row(paired, "| Multi-task with all attributes |")[1:] == ["+0.00", "[-1.00, +1.00]", "3", "3", "1.000000", "no"]
    assert "64 test images × 6 attributes" in paired


def test_no_significance_row_compares_the_final_set_with_itself():
    out = sample()
    out.final_same_as = ["adversarial"]
    section = _section(render_report(out, "exp").markdown, "## Statistical significance")
    assert "Pairwise adversarial (gradient reversal)" not in section
    assert "| test | Single task per attribute |" in section

"""The appendix A.1 z-test: the paper's own worked examples, signs and undefined cases."""

import math

import pytest

from aal_k8s import paper
from aal_k8s.significance import significant, z_test

# (name, P1, P0, N, z rounded as the paper prints it, p rounded as the paper prints it, decimals of p)
CONSISTENT = [
    ("celeba test, Table 2: 91.94 vs 91.81", 0.9194, 0.9181, 798480, 4.24, 0.000023, 6),
    ("duke test: 91.32 vs 91.21", 0.9132, 0.9121, 456941, 2.63, 0.009, 3),
]


@pytest.mark.parametrize("name, p1, p0, n, z_printed, p_printed, digits", CONSISTENT, ids=[c[0] for c in CONSISTENT])
def test_z_test_reproduces_the_papers_consistent_a1_examples(name, p1, p0, n, z_printed, p_printed, digits):
    z, p = z_test(p1, p0, n)
    assert round(z, 2) == z_printed
    assert round(p, digits) == p_printed
    assert significant(p)


def test_papers_first_a1_example_does_not_follow_its_own_formula_we_get_4_02_not_4_69():
    # Appendix A.1: "baseline 92.34 %, our best 92.46 %, N = 794680, Z-score 4.69, p-value 0.000003".
    # (0.9246 - 0.9234) * sqrt(794680) / sqrt(0.9234 * 0.0766) = 4.02 (p = 0.000058): the printed
    # 4.69 cannot come from these numbers; we report what the formula gives.
    z, p = z_test(0.9246, 0.9234, 794680)
    assert round(z, 2) == 4.02 and z != pytest.approx(4.69, abs=0.05)
    assert round(p, 6) == 0.000058 and p < 0.05


def test_paper_module_lists_the_same_examples():
    assert [(e[0], e[1], e[2]) for e in paper.A1_EXAMPLES] == [
        (0.9246, 0.9234, 794680),
        (0.9194, 0.9181, 798480),
        (0.9132, 0.9121, 456941),
    ]
    for p1, p0, n, z_printed, _ in paper.A1_EXAMPLES[1:]:
        assert round(z_test(p1, p0, n)[0], 2) == z_printed


def test_z_is_the_formula_and_the_p_value_two_sided_and_symmetric():
    z, p = z_test(0.83, 0.80, 400)
    assert z == pytest.approx(0.03 * 20 / math.sqrt(0.8 * 0.2))  # 1.5
    assert p == pytest.approx(0.1336144, abs=1e-6)  # 2 * (1 - Phi(1.5))
    z_neg, p_neg = z_test(0.77, 0.80, 400)
    assert z_neg == pytest.approx(-z) and p_neg == pytest.approx(p)
    assert z_test(0.8, 0.8, 100) == (0.0, 1.0)
    assert not significant(p)


UNDEFINED = [
    ("P0 = 1: no variance under the null", 1.0, 1.0, 100),
    ("P0 = 0", 0.1, 0.0, 100),
    ("no samples", 0.9, 0.8, 0),
    ("N unknown", 0.9, 0.8, None),
    ("not a number", math.nan, 0.8, 100),
    ("P1 missing", None, 0.8, 100),
]


@pytest.mark.parametrize("name, p1, p0, n", UNDEFINED, ids=[u[0] for u in UNDEFINED])
def test_z_test_is_none_where_it_is_undefined(name, p1, p0, n):
    assert z_test(p1, p0, n) == (None, None)
    assert significant(None) is None

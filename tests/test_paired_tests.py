"""Paired tests on per-image predictions: McNemar and bootstrap (hand-derived values), the compact
predictions artifact, partner choice under adversarial.partner_test / min_drop, and the final set
compared with each baseline on test. Expected p-values are binomial sums worked out by hand."""

import numpy as np
import pytest

from aal_k8s import predictions
from aal_k8s.config import load_config
from aal_k8s.errors import AALError
from aal_k8s.planner import plan_stage
from aal_k8s.reduce import reduce_experiment
from aal_k8s.significance import bootstrap_interval, mcnemar_exact
from aal_k8s.store import ExperimentStore, LocalStore


def _pairs(b: int, c: int, agree: int = 10):
    """Two correctness vectors with b items only the first gets right, c only the second."""
    first = [True] * b + [False] * c + [True] * agree
    second = [False] * b + [True] * c + [True] * agree
    return np.array(first), np.array(second)


@pytest.mark.parametrize(
    "b, c, p",
    [
        (6, 0, 2 / 2**6),  # 2 * P(X = 0 | n = 6): the smallest split that reaches p < 0.05
        (5, 0, 2 / 2**5),  # one fewer: 0.0625, not significant
        (8, 1, 2 * (1 + 9) / 2**9),  # 2 * (C(9,0) + C(9,1)) / 2^9 = 20/512
        (12, 5, 2 * (1 + 17 + 136 + 680 + 2380 + 6188) / 2**17),  # 2 * sum_{k<=5} C(17,k) / 2^17
    ],
)
def test_mcnemar_exact_is_the_two_sided_binomial_on_the_discordant_pairs(b, c, p):
    first, second = _pairs(b, c)
    t = mcnemar_exact(first, second)
    assert (t.only_first, t.only_second) == (b, c)
    assert t.p == pytest.approx(p, rel=1e-12)
    assert mcnemar_exact(second, first).p == pytest.approx(p, rel=1e-12)  # symmetric


def test_mcnemar_without_discordant_pairs_gives_p_one():
    same = np.array([True, False, True])
    assert mcnemar_exact(same, same).p == 1.0


def test_bootstrap_interval_of_a_constant_difference_is_that_constant():
    lo, hi = bootstrap_interval(np.full(50, 0.25))
    assert lo == hi == 0.25


def test_bootstrap_interval_brackets_the_mean_and_repeats_exactly():
    x = np.array([1.0] * 10 + [-1.0] * 2 + [0.0] * 28) / 6
    lo, hi = bootstrap_interval(x)
    assert lo < x.mean() < hi
    assert (lo, hi) == bootstrap_interval(x)  # seeded: the report has the same bytes every time


def test_predictions_round_trip_one_bit_per_image():
    rng = np.random.default_rng(1)
    correct = {"val": rng.random((13, 2)) > 0.5, "test": rng.random((9, 2)) > 0.5}
    data = predictions.pack(correct, ["a", "b"])
    back = predictions.unpack(data)
    for split in ("val", "test"):
        for j, head in enumerate(["a", "b"]):
            assert np.array_equal(back[split][head], correct[split][:, j])
    from safetensors.numpy import load

    assert {k: v.nbytes for k, v in load(data).items()} == {"val/a": 2, "val/b": 2, "test/a": 2, "test/b": 2}  # ceil(13/8), ceil(9/8)


def test_the_same_predictions_give_the_same_bytes_every_time():
    # safetensors keeps the header metadata in a hash map whose order changes between calls; the
    # artifact's bytes (and the checksums that name it) must not
    correct = {"val": np.eye(9, 3, dtype=bool), "test": np.ones((5, 3), dtype=bool)}
    assert len({predictions.pack(correct, ["a", "b", "c"]) for _ in range(20)}) == 1


# -- reduce on hand-made runs with predictions ------------------------------------------------------

N = 40  # val and test images
ATTRS = ["square", "ring", "h_stripes", "cross", "red_tint", "blue_tint"]


def _vec(wrong=(), right=()):
    """Correctness over N images: images 0..33 right (0.85) by default, 34..39 wrong; then the
    listed images flipped to wrong / right."""
    v = np.array([i < 34 for i in range(N)])
    v[list(wrong)] = False
    v[list(right)] = True
    return v


BASE = _vec()
# square trained with ring: 12 images lost (0..11), 5 gained (34..38): drop 7 images, McNemar p = 0.1435
WITH_RING = _vec(wrong=range(12), right=range(34, 39))
# square trained with red_tint: 6 images lost, none gained: drop 6 images, p = 2/64 = 0.03125
WITH_RED = _vec(wrong=range(6))


def _commit(exp, spec, val: dict, test: dict | None = None):
    test = test or val
    heads = spec.heads
    correct = {"val": np.stack([val[h] for h in heads], 1), "test": np.stack([test[h] for h in heads], 1)}
    metrics = {
        "heads": heads,
        "val_acc": {h: float(val[h].mean()) for h in heads},
        "test_acc": {h: float(test[h].mean()) for h in heads},
    }
    exp.commit_run(spec, {predictions.ARTIFACT: predictions.pack(correct, heads)}, metrics)


def _store(tmp_path, *overrides):
    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}", *overrides])
    exp = ExperimentStore(LocalStore(str(tmp_path)), cfg.experiment_name)
    for spec in plan_stage("single", cfg):
        _commit(exp, spec, {spec.primary[0]: BASE})
    for spec in plan_stage("pairwise", cfg):
        a, b = spec.primary
        cells = {("square", "ring"): WITH_RING, ("square", "red_tint"): WITH_RED}
        _commit(exp, spec, {a: cells.get((a, b), BASE), b: cells.get((b, a), BASE)})
    return cfg, exp


def test_paper_rule_takes_the_largest_drop_and_records_that_it_is_not_significant(tmp_path):
    cfg, exp = _store(tmp_path)
    out = reduce_experiment(exp, cfg)
    assert out.partners["square"] == "ring"  # drop 7 images beats red_tint's 6
    assert out.partners["ring"] is None
    t = out.partner_tests["square"]["ring"]
    assert (t["only_alone"], t["only_with"]) == (12, 5)
    assert t["p"] == pytest.approx(18804 / 131072, rel=1e-12)
    assert t["drop"] == pytest.approx(7 / N)
    assert set(out.partner_tests) == {"square"}  # only chosen partners are tested under the paper's rule


def test_mcnemar_partner_test_takes_the_largest_significant_drop(tmp_path):
    cfg, exp = _store(tmp_path, "adversarial.partner_test=mcnemar")
    out = reduce_experiment(exp, cfg)
    assert out.partners["square"] == "red_tint"
    assert out.partner_tests["square"]["red_tint"]["p"] == pytest.approx(2 / 64)
    assert out.partner_test == "mcnemar"


def test_min_drop_excludes_smaller_drops_before_the_test(tmp_path):
    cfg, exp = _store(tmp_path, "adversarial.min_drop=0.16")  # ring's 0.175 passes, red_tint's 0.15 not
    assert reduce_experiment(exp, cfg).partners["square"] == "ring"
    cfg, exp = _store(tmp_path, "adversarial.min_drop=0.16", "adversarial.partner_test=mcnemar")
    assert reduce_experiment(exp, cfg).partners["square"] is None  # ring's drop is not significant
    cfg, exp = _store(tmp_path, "adversarial.min_drop=0.2")
    assert reduce_experiment(exp, cfg).partners["square"] is None


def test_mcnemar_on_runs_without_predictions_is_a_one_line_error(tmp_path):
    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}", "adversarial.partner_test=mcnemar"])
    exp = ExperimentStore(LocalStore(str(tmp_path)), cfg.experiment_name)
    for spec in plan_stage("single", cfg) + plan_stage("pairwise", cfg):
        exp.commit_run(spec, {}, {"val_acc": {h: 0.8 if h == "square" and len(spec.heads) > 1 else 0.9 for h in spec.heads},
                                  "test_acc": {h: 0.9 for h in spec.heads}, "heads": spec.heads})  # fmt: skip
    with pytest.raises(AALError, match="partner_test=mcnemar needs per-image validation predictions.*committed without"):
        reduce_experiment(exp, cfg)


def test_min_drop_must_be_a_fraction():
    with pytest.raises(AALError, match=r"adversarial.min_drop: must be in \[0, 1\)"):
        load_config(dataset="synthetic", overrides=["adversarial.min_drop=5"])


# the adversarial square on test: gains the 6 images single-task gets wrong (34..39), loses 2 (0, 1)
ADV_TEST = _vec(wrong=(0, 1), right=range(34, 40))


def test_final_set_is_compared_with_each_baseline_on_test_images_but_not_with_itself(tmp_path):
    cfg, exp = _store(tmp_path, "adversarial.partner_test=mcnemar")
    for spec in plan_stage("multi", cfg):
        _commit(exp, spec, {h: BASE for h in spec.heads})
    partners = reduce_experiment(exp, cfg).partners
    for spec in plan_stage("adversarial", cfg, partners):
        a, b = spec.primary[0], spec.auxiliary[0]
        better = spec.lam == 0.1  # chosen on val
        _commit(exp, spec, {a: _vec(right=[34]) if better else BASE, b: BASE}, {a: ADV_TEST if better else BASE, b: BASE})
    out = reduce_experiment(exp, cfg)
    assert out.final["square"].source == "adversarial" and out.final["square"].lam == 0.1
    # the Adv column is the final set here (no other attribute has a partner): no row for it
    assert set(out.paired_test) == {"single", "multi_partner", "multi_all"} and out.final_same_as == ["adversarial"]
    single = out.paired_test["single"]
    assert (single["only_final"], single["only_baseline"]) == (6, 2)
    assert single["p"] == pytest.approx(2 * (1 + 8 + 28) / 2**8)  # 2 * (C(8,0) + C(8,1) + C(8,2)) / 2^8
    assert single["diff"] == pytest.approx((6 - 2) / (N * len(ATTRS)))
    assert single["ci_low"] < single["diff"] < single["ci_high"]
    assert (single["images"], single["attributes"]) == (N, 6)
    # Mul for square is the pairwise run with red_tint (wrong on 0..5 on test too): 4 + 6 gained, none lost
    mul = out.paired_test["multi_partner"]
    assert (mul["only_final"], mul["only_baseline"]) == (10, 0)

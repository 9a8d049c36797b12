"""The model card beside the manifest: provenance, per-attribute metrics with Wilson intervals,
partner and λ, intended use and limits."""

import pytest
from report_samples import sample

from aal_k8s.modelcard import model_card, wilson_interval
from aal_k8s.reduce import Provenance


def test_wilson_interval_of_half_on_a_hundred_images():
    # p = 0.5, n = 100, z = 1.959964: centre (0.5 + z^2/200) / (1 + z^2/100) = 0.5;
    # half-width z * sqrt(0.25/100 + z^2/40000) / (1 + z^2/100) = 0.0961685
    lo, hi = wilson_interval(0.5, 100)
    assert (lo, hi) == (pytest.approx(0.5 - 0.0961685, abs=1e-6), pytest.approx(0.5 + 0.0961685, abs=1e-6))


def _manifest(out):
    models = []
    for i, a in enumerate(out.attributes, 1):
        c = out.final[a]
        models.append({"attribute": a, "index": i, "source": c.source, "partner": c.partner, "lambda": c.lam,
                       "val_acc": c.val, "test_acc": c.test})  # fmt: skip
    return {"experiment": "exp", "dataset": "synthetic", "backbone": "small_cnn", "final_selection": "best_on_val", "models": models}


def test_card_lists_each_classifier_with_its_test_interval_partner_and_lambda():
    out = sample()  # 64 test images; square: adversarial vs red_tint at 0.1, test 0.82
    out.provenance = Provenance(code="0.1.0 (git abc1234)", split_sizes={"train": 300, "val": 64, "test": 64})
    card = model_card(out, _manifest(out))
    lo, hi = wilson_interval(0.82, 64)  # 52 of 64
    assert f"| 1 | square | adversarial | red_tint | 0.1 | 83.00 | 82.00 | [{100 * lo:.2f}, {100 * hi:.2f}] |" in card
    assert "| 2 | ring | single |  |  | 80.00 | 79.00 |" in card
    assert "- Code: aal-k8s 0.1.0 (git abc1234)" in card
    assert "images per split: train 300, val 64, test 64" in card
    assert "## Intended use and limits" in card and "Not for identifying people" in card



def test_card_title_names_the_dataset_only_when_the_experiment_is_named_otherwise():
    out = sample()
    assert model_card(out, _manifest(out)).startswith("# Model card: exp (synthetic)\n")
    assert model_card(out, dict(_manifest(out), experiment="synthetic")).startswith("# Model card: synthetic\n")

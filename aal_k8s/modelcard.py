"""The model card beside the final model set's manifest (``final/MODEL_CARD.md``): what the
classifiers are, how they were made (config, code version, data and split sizes), how good each is
(validation and test accuracy, a 95% Wilson interval on test), its partner and λ, and what they are
and are not fit for. Written from the reduce output and the manifest alone.
"""

from __future__ import annotations

from aal_k8s.reduce import ReduceOutput

CARD_NAME = "MODEL_CARD.md"

LIMITS = [
    "Binary attribute classifiers for images like the training data (same dataset, crop and resolution); "
    "accuracy on other sources, poses or demographics is not measured here.",
    "Accuracies are on this dataset's validation and test splits; the test interval covers sampling of test "
    "images only, not a shift in the data.",
    "Labels of face-attribute datasets are noisy and partly subjective; a probability is not a calibrated "
    "measure of the attribute.",
    "Not for identifying people, nor for decisions about people (hiring, access, policing) without a separate "
    "evaluation of fairness and error costs.",
]


def wilson_interval(acc: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured on ``n`` images (scipy)."""
    from scipy.stats import binomtest

    k = int(round(acc * n))
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def model_card(out: ReduceOutput, manifest: dict) -> str:
    prov = out.provenance
    n_test = out.eval_images.get("test")
    sizes = ", ".join(f"{s} {n}" for s, n in prov.split_sizes.items()) or "not recorded"
    name, dataset = manifest["experiment"], manifest["dataset"]
    lines = [
        f"# Model card: {name}" + ("" if name == dataset else f" ({dataset})"),
        "",
        f"{len(manifest['models'])} stand-alone binary classifiers, one per attribute: a {manifest['backbone']} "
        "backbone and one linear head each, in safetensors (`models/<attribute>.safetensors`, listed with their "
        "sha256 in `manifest.json`). Input and output conventions: `manifest.json` (`input`, `output`).",
        "",
        "## How they were made",
        "",
        "Adversarial Attribute Learning: for each attribute a, the most negative partner b from pairwise multi-task "
        "training, then a trained with b's head behind gradient reversal at the λ chosen on validation; the final "
        f"classifier is chosen by `{manifest.get('final_selection', '?')}`.",
        "",
        f"- Code: aal-k8s {prov.code or 'version not recorded'}",
        f"- Data: {manifest['dataset']}, images per split: {sizes}",
        f"- Partners from: {out.partners_from} (test {out.partner_test}, min drop {out.min_drop:g})",
        f"- Runs committed: {prov.first_commit or '?'} to {prov.last_commit or '?'} (UTC)",
        "- Full config: `provenance.config` in the experiment's `reduce/summary.json`",
        "",
        "## Per attribute",
        "",
        "| # | Attribute | Source | Partner | λ | Val (%) | Test (%) | Test 95% interval (%) |",
        "|---:|---|---|---|---:|---:|---:|---|",
    ]
    for m in manifest["models"]:
        lo_hi = wilson_interval(m["test_acc"], n_test) if n_test else None
        interval = f"[{100 * lo_hi[0]:.2f}, {100 * lo_hi[1]:.2f}]" if lo_hi else "n/a"
        lam = "" if m["lambda"] is None else f"{m['lambda']:g}"
        lines.append(
            f"| {m['index']} | {m['attribute']} | {m['source']} | {m['partner'] or ''} | {lam} | "
            f"{100 * m['val_acc']:.2f} | {100 * m['test_acc']:.2f} | {interval} |"
        )
    lines += [
        "",
        f"Test intervals: Wilson score intervals over the {n_test or '?'} test images. The final set as a whole against "
        "its baselines on the same images: the report's \"Paired tests on the test images\".",
        "",
        "## Intended use and limits",
        "",
        *[f"- {x}" for x in LIMITS],
        "",
    ]
    return "\n".join(lines)

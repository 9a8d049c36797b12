"""The opening: title, summary (what improved, by how much, how sure) and provenance."""

from __future__ import annotations

from aal_k8s.report.analysis import Analysis
from aal_k8s.report.document import Para
from aal_k8s.report.sections.common import p_text, pct
from aal_k8s.significance import ALPHA


def title(a: Analysis, experiment: str) -> str:
    """``AAL report: celeba-rerun (celeba)``; the dataset only once when the experiment is named after it."""
    return f"AAL report: {experiment}" + ("" if experiment == a.out.dataset else f" ({a.out.dataset})")


def summary(a: Analysis) -> list:
    out, ours = a.out, a.ours
    single = a.ablation("single")
    m = len(out.attributes)
    if ours.test is None or single.test is None:
        return [Para("**Summary.** No complete result yet: see the missing runs at the end.")]
    diff = 100 * (ours.test - single.test)
    text = (
        f"**Summary.** {ours.label[0].upper() + ours.label[1:]}: mean test accuracy {pct(ours.test)}% over {m} attributes, "
        f"{diff:+.2f} points over single-task training"
    )
    paired = out.paired_test.get("single")
    if paired:
        verdict = "significant" if paired["p"] < ALPHA else "not significant"
        text += (
            f" (95% bootstrap interval over test images [{100 * paired['ci_low']:+.2f}, {100 * paired['ci_high']:+.2f}]; "
            f"McNemar p = {p_text(paired['p'])}: {verdict} at {ALPHA})"
        )
    else:
        z_row = next((r for r in a.z_tests if r.split == "test" and r.key == "single"), None)
        if z_row and z_row.p is not None:
            text += f" (the paper's z-test: p = {p_text(z_row.p)})"
    with_partner = [x for x in out.attributes if out.partners.get(x)]
    not_sig = [x for x in with_partner if a.drop_significant[x] is False]
    adv = [x for x in out.attributes if x in out.final and out.final[x].source == "adversarial"]
    text += (
        f". {len(with_partner)} of {m} attributes have a negative partner ({out.partners_from}"
        + (f"; {len(not_sig)} of those drops not significant" if not_sig else "")
        + f"); {len(adv)} use their adversarial model in the final set. Validation chose partners, λ and epochs, "
        "so the test numbers are untouched by those choices."
    )
    return [Para(text)]


def provenance(a: Analysis) -> list:
    out = a.out
    prov = out.provenance
    if not prov.code:
        return []  # reduced by a version that did not record it
    cfg = prov.config
    model, train, adv, data = cfg.get("model", {}), cfg.get("train", {}), cfg.get("adversarial", {}), cfg.get("dataset", {})
    sizes = " / ".join(f"{prov.split_sizes[s]} {s}" for s in ("train", "val", "test") if s in prov.split_sizes)
    lams = ", ".join(f"{x:g}" for x in adv.get("lambdas", []))
    when = f"Runs committed {prov.first_commit} to {prov.last_commit} (UTC). " if prov.first_commit else ""
    return [
        Para(
            f"**Provenance.** Code: aal-k8s {prov.code}. Data: {out.dataset}"
            + (f", {sizes} images" if sizes else "")
            + f" (seed {data.get('seed', '?')}). Config: {model.get('backbone', '?')} ({model.get('pretrained', '?')} init), "
            f"lr {train.get('lr', '?'):g}, {train.get('epochs', '?')} epochs, batch {train.get('batch_size', '?')}, "
            f"λ grid [{lams}], partners from {adv.get('partners_from', '?')} (test {adv.get('partner_test', '?')}, "
            f"min drop {adv.get('min_drop', 0):g}), final selection {adv.get('final_selection', '?')}. {when}"
            "The full config is `provenance.config` in `reduce/summary.json`."
        )
    ]

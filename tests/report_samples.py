"""Hand-made reduce outputs for the report tests (and for looking at the figures by hand).

``python tests/report_samples.py /tmp/aal-figures`` writes the report of the 6-attribute sample and
of a 40-attribute CelebA-like one (md, html, every png) under that folder.

The 6-attribute sample (synthetic names), validation; test = validation - 0.01 unless noted:

    attribute   single  partner      Mul    Adv (lambda)        final
    square      80      red_tint     70     83   (0.1)          adversarial
    ring        80      cross        75     79   (0.3)          single
    h_stripes   90      none         90     90                  single
    cross       90      square       88     91   (0.5), test 89.5  adversarial
    red_tint    99      blue_tint    98.5   99.2 (0.3), test 98.5  adversarial (lambda 1.0 failed)
    blue_tint   99      none         99     99                  single
"""

from __future__ import annotations

import os
import random
import sys

from aal_k8s.data import attribute_names
from aal_k8s.reduce import Choice, ReduceOutput

ATTRS = ["square", "ring", "h_stripes", "cross", "red_tint", "blue_tint"]
SINGLE = {"square": 0.80, "ring": 0.80, "h_stripes": 0.90, "cross": 0.90, "red_tint": 0.99, "blue_tint": 0.99}
PAIR = {  # (a, b) -> val accuracy of a trained with b; every other pair: single + 0.01
    ("square", "ring"): 0.78,
    ("square", "red_tint"): 0.70,
    ("ring", "cross"): 0.75,
    ("ring", "blue_tint"): 0.75,
    ("cross", "square"): 0.88,
    ("red_tint", "blue_tint"): 0.985,
}
PARTNERS = {
    "square": "red_tint",
    "ring": "cross",
    "h_stripes": None,
    "cross": "square",
    "red_tint": "blue_tint",
    "blue_tint": None,
}
ADV = {  # a -> (lambda, val, test) of the chosen lambda
    "square": (0.1, 0.83, 0.82),
    "ring": (0.3, 0.79, 0.785),
    "cross": (0.5, 0.91, 0.895),
    "red_tint": (0.3, 0.992, 0.985),
}
CORR = {  # unordered label correlations
    ("square", "ring"): 0.3, ("square", "h_stripes"): 0.0, ("square", "cross"): -0.5, ("square", "red_tint"): 0.6,
    ("square", "blue_tint"): 0.1, ("ring", "h_stripes"): 0.05, ("ring", "cross"): 0.2, ("ring", "red_tint"): -0.1,
    ("ring", "blue_tint"): 0.0, ("h_stripes", "cross"): 0.4, ("h_stripes", "red_tint"): 0.1,
    ("h_stripes", "blue_tint"): -0.2, ("cross", "red_tint"): 0.0, ("cross", "blue_tint"): 0.1,
    ("red_tint", "blue_tint"): -0.7,
}  # fmt: skip
AFFINITY = {  # a -> Z(b -> a) in the order of ATTRS without a
    "square": [-0.02, 0.01, 0.03, -0.05, 0.02],
    "ring": [0.01, 0.02, -0.01, 0.00, -0.03],
    "h_stripes": [0.01, 0.02, 0.03, 0.04, 0.05],
    "cross": [-0.04, 0.01, 0.02, 0.00, 0.01],
    "red_tint": [0.01, 0.01, 0.01, 0.01, 0.02],
    "blue_tint": [0.0, 0.0, 0.0, 0.0, 0.0],  # constant: Spearman n/a
}
AFFINITY_PARTNERS = {
    "square": "red_tint",
    "ring": "blue_tint",
    "h_stripes": None,
    "cross": "square",
    "red_tint": None,
    "blue_tint": None,
}
CORRELATION_PARTNERS = {
    "square": "red_tint",
    "ring": "square",
    "h_stripes": "cross",
    "cross": "square",
    "red_tint": "blue_tint",
    "blue_tint": "red_tint",
}
GROUP = {"square": ["red_tint", "ring"], "ring": ["cross", "blue_tint"], "cross": ["square"], "red_tint": ["blue_tint"]}
FAILED_ADV = "adv-red_tint-lam1"
FAILURE = "worker <pod-3> killed: OOM & exit 137"


def sample() -> ReduceOutput:
    """The 6-attribute sample described in the module docstring, with every new field filled."""
    out = ReduceOutput(dataset="synthetic", attributes=list(ATTRS))
    out.single_val = dict(SINGLE)
    out.single_test = {a: round(v - 0.01, 6) for a, v in SINGLE.items()}
    for a in ATTRS:
        for b in ATTRS:
            if a != b:
                v = PAIR.get((a, b), round(SINGLE[a] + 0.01, 6))
                out.pair_val.setdefault(a, {})[b] = v
                out.pair_test.setdefault(a, {})[b] = round(v - 0.01, 6)
    out.multi_val = {a: round(v + 0.002, 6) for a, v in SINGLE.items()}
    out.multi_test = {a: round(v - 0.009, 6) for a, v in SINGLE.items()}
    out.partner_sources["pairwise"] = dict(PARTNERS)  # out.partners derives from it
    for a, (lam, val, test) in ADV.items():
        runs = {}
        for grid_lam in (0.01, 0.1, 0.3, 0.5, 1.0):
            if a == "red_tint" and grid_lam == 1.0:
                continue  # failed
            v, t = (val, test) if grid_lam == lam else (val - 0.02, test - 0.02)
            runs[repr(grid_lam)] = {"lam": grid_lam, "run_id": f"adv-{a}-lam{grid_lam:g}", "val": v, "test": t}
        out.adversarial[a] = runs
        out.chosen_lambda[a] = lam
    for a in ATTRS:
        adv = ADV.get(a)
        if adv and adv[1] > SINGLE[a]:
            out.final[a] = Choice(a, "adversarial", f"adv-{a}-lam{adv[0]:g}", PARTNERS[a], adv[0], adv[1], adv[2])
        else:
            out.final[a] = Choice(a, "single", f"sin-{a}", None, None, SINGLE[a], out.single_test[a])
    out.missing = {"single": [], "pairwise": [], "adversarial": [FAILED_ADV], "gan": ["gan-red_tint"]}
    out.failed = {FAILED_ADV: FAILURE}
    out.partners_from = "pairwise"
    out.partner_sources = {
        "pairwise": dict(PARTNERS),
        "correlation": dict(CORRELATION_PARTNERS),
        "affinity": dict(AFFINITY_PARTNERS),
    }
    for (a, b), r in CORR.items():
        out.label_corr.setdefault(a, {})[b] = r
        out.label_corr.setdefault(b, {})[a] = r
    for a in ATTRS:
        out.label_corr[a][a] = 1.0
    out.affinity = {a: dict(zip([b for b in ATTRS if b != a], AFFINITY[a])) for a in ATTRS}
    out.method_adversarial = {
        "affinity": {
            "square": {"partner": "red_tint", "lam": 0.1, "val": 0.83, "test": 0.82, "run_id": "adv-square-lam0.1"},
            "ring": {"partner": "blue_tint", "lam": 0.1, "val": 0.805, "test": 0.795, "run_id": "adv-ring-blue"},
            "cross": {"partner": "square", "lam": 0.5, "val": 0.91, "test": 0.895, "run_id": "adv-cross-lam0.5"},
        }
    }
    out.group_partners = {a: list(bs) for a, bs in GROUP.items()}

    def runs(vals: dict, stage: str) -> dict:
        return {
            a: {
                "val": v,
                "test": round(v - 0.01, 6),
                "run_id": f"{stage}-{a}",
                "auxiliary": GROUP.get(a, []),
                "lam": 0.1,
            }
            for a, v in vals.items()
        }

    out.ablations = {
        "gan": runs({"square": 0.82, "ring": 0.78, "cross": 0.905}, "gan"),  # red_tint missing
        "shared": runs({"square": 0.81, "ring": 0.80, "cross": 0.90, "red_tint": 0.99}, "shared"),
        "group": runs({"square": 0.81, "ring": 0.81, "cross": 0.905, "red_tint": 0.991}, "group"),
    }
    out.stage_seconds = {
        "single": 60.0, "pairwise": 300.0, "multi": 20.0, "affinity": 30.0,
        "adversarial": 400.0, "gan": 90.0, "shared": 100.0, "group": 120.0,
    }  # fmt: skip
    out.stage_runs = {
        "single": 6,
        "pairwise": 15,
        "multi": 1,
        "affinity": 1,
        "adversarial": 19,
        "gan": 3,
        "shared": 4,
        "group": 4,
    }
    out.eval_images = {"val": 64, "test": 64}
    return out


def celeba_like(seed: int = 0) -> ReduceOutput:
    """A complete 40-attribute CelebA-shaped reduce output with random but plausible numbers."""
    rng = random.Random(seed)
    attrs = attribute_names("celeba")
    out = ReduceOutput(dataset="celeba", attributes=attrs)
    base = {a: rng.uniform(0.78, 0.995) for a in attrs}
    out.single_val = {a: round(v, 5) for a, v in base.items()}
    out.single_test = {a: round(v - rng.uniform(0.0, 0.01), 5) for a, v in base.items()}
    for a in attrs:
        for b in attrs:
            if a != b:
                d = rng.gauss(0.0, 0.003) - (0.006 if b == "Big_Lips" else 0.0)
                out.pair_val.setdefault(a, {})[b] = round(base[a] + d, 5)
                out.pair_test.setdefault(a, {})[b] = round(base[a] + d - 0.004, 5)
    out.multi_val = {a: round(v + rng.gauss(0, 0.002), 5) for a, v in base.items()}
    out.multi_test = {a: round(v - 0.004 + rng.gauss(0, 0.002), 5) for a, v in base.items()}
    pairwise = out.partner_sources.setdefault("pairwise", {})  # out.partners derives from it
    for a in attrs:
        row = out.pair_val[a]
        b = min((x for x in attrs if x != a), key=lambda x: (row[x], attrs.index(x)))
        pairwise[a] = b if row[b] < out.single_val[a] else None
    for i, a in enumerate(attrs):
        if out.partners[a] is None:
            out.final[a] = Choice(a, "single", f"sin-{i}", None, None, out.single_val[a], out.single_test[a])
            continue
        lam = rng.choice([0.01, 0.1, 0.3, 0.5, 1.0])
        v = round(base[a] + rng.gauss(0.0012, 0.002), 5)
        t = round(out.single_test[a] + rng.gauss(0.0012, 0.002), 5)
        out.adversarial[a] = {repr(lam): {"lam": lam, "run_id": f"adv-{i}", "val": v, "test": t}}
        out.chosen_lambda[a] = lam
        out.final[a] = Choice(a, "adversarial", f"adv-{i}", out.partners[a], lam, v, t)
    for a in attrs:
        for b in attrs:
            if attrs.index(b) > attrs.index(a):
                r = round(rng.uniform(-0.6, 0.6) * rng.random(), 4)
                out.label_corr.setdefault(a, {})[b] = r
                out.label_corr.setdefault(b, {})[a] = r
        out.affinity[a] = {b: round(rng.gauss(0.0, 0.01), 5) for b in attrs if b != a}
    aff_partner = {a: min(out.affinity[a], key=lambda b: (out.affinity[a][b], attrs.index(b))) for a in attrs}
    out.partner_sources = {"pairwise": dict(out.partners), "affinity": aff_partner}
    out.method_adversarial = {
        "affinity": {a: {"partner": b, "lam": 0.1, "val": round(base[a] + rng.gauss(0.0005, 0.002), 5),
                         "test": round(out.single_test[a] + rng.gauss(0.0005, 0.002), 5), "run_id": f"aff-adv-{a}"}
                     for a, b in aff_partner.items()}
    }  # fmt: skip
    for stage, delta in (("gan", 0.0008), ("wgan", 0.0009), ("shared", 0.0003), ("group", -0.01)):
        out.ablations[stage] = {
            a: {
                "val": round(base[a] + delta, 5),
                "test": round(out.single_test[a] + delta, 5),
                "run_id": f"{stage}-{a}",
                "auxiliary": [],
                "lam": 0.1,
            }
            for a in attrs
            if out.partners[a] is not None
        }
    out.group_partners = {a: [out.partners[a]] for a in attrs if out.partners[a] is not None}
    out.stage_seconds = {
        "single": 40 * 3600.0,
        "pairwise": 780 * 3700.0,
        "multi": 3900.0,
        "affinity": 5200.0,
        "adversarial": 5 * 40 * 3600.0,
    }
    out.stage_runs = {"single": 40, "pairwise": 780, "multi": 1, "affinity": 1, "adversarial": 200}
    out.eval_images = {"val": 19867, "test": 19962}
    return out


def write_all(folder: str) -> list[str]:
    """Render both samples' reports into ``folder``; the written paths."""
    from aal_k8s.report import render_report

    written = []
    for name, out in (("sample6", sample()), ("celeba40", celeba_like())):
        rep = render_report(out, name)
        d = os.path.join(folder, name)
        os.makedirs(os.path.join(d, "figures"), exist_ok=True)
        for fname, data in [("report.md", rep.markdown.encode()), ("report.html", rep.html.encode())] + [
            (f"figures/{k}.png", v) for k, v in rep.figures.items()
        ]:
            path = os.path.join(d, fname)
            with open(path, "wb") as f:
                f.write(data)
            written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all(sys.argv[1] if len(sys.argv) > 1 else "/tmp/aal-figures"):
        print(p)

"""pairwise: every pair of attributes on one backbone; one run gives "a trained with b" and
"b trained with a" (the paper's Table 4 matrix, and its partners)."""

import itertools

from aal_k8s.modes import Options
from aal_k8s.stages.base import DISCOVERY, PlanInputs, Stage


def plan(inputs: PlanInputs):
    chosen = set(inputs.names)
    return [
        inputs.spec((a, b), options=Options())
        for a, b in itertools.combinations(inputs.all_names, 2)
        if a in chosen or b in chosen
    ]


STAGE = Stage(
    name="pairwise", tag="pair", mode="multi", phase=DISCOVERY, plan=plan, paper_protocol=True,
    summary="M(M-1)/2 two-head runs",
)  # fmt: skip

"""Accuracy of every head over a split (the loop's validation and test passes)."""

from __future__ import annotations

import torch

from aal_k8s.model import AttributeNet


@torch.no_grad()
def evaluate(
    model: AttributeNet, batches, n_heads: int, device: torch.device, bf16: bool = False, forward=None, per_image: list | None = None
) -> list[float]:
    """Accuracy of each head (threshold 0.5 on the sigmoid) over ``batches`` (x, y) of a split;
    counts stay on the device until the end (one host synchronisation per evaluation).
    ``per_image``: a list that receives each batch's bool [batch, heads] correctness (on the device)."""
    model.eval()
    forward = forward or model
    correct = torch.zeros(n_heads, dtype=torch.long, device=device)
    n = 0
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        hit = (logits > 0) == (y > 0.5)
        correct += hit.sum(0)
        if per_image is not None:
            per_image.append(hit)
        n += y.shape[0]
    return (correct.double() / max(1, n)).tolist()

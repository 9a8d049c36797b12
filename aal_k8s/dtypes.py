"""The accumulation dtype of the head maths, shared by the PyTorch reference (``aal_k8s.heads``),
the fused operator's fake kernels (``aal_k8s.ops``) and the objectives, so all three agree with
csrc/fused_heads.h. A leaf module: ``heads`` must not load the C++ extension that ``ops`` loads."""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation for half/bf16/fp32 inputs, fp64 for fp64 (so gradcheck is exact)."""
    return torch.promote_types(dtype, torch.float32)

"""The AAL head computation: K linear heads with BCE losses and per-head gradient reversal.

This is the one function the trainer calls for the hot loop (``head_losses``). Its maths
(paper eq. 6, and eq. 10/11 for groups of A primary and B auxiliary attributes):

    z[b, k]   = h[b] . W[k] + bias[k]
    loss[k]   = mean over the (unmasked) batch of BCE-with-logits(z[:, k], y[:, k])

Masked-out elements are left out by selection, not multiplied by 0: a NaN (or inf) label or feature
row that the mask excludes leaves the losses, the residual and ``dh`` finite. The weight gradient
``dW = dz^T h`` is a product over rows, so a NaN *feature* row still reaches ``dW`` as 0 * NaN;
drop such rows from ``h`` instead of masking them.

Backward, for an upstream gradient g[k] on loss[k]:

    dW[k], dbias[k] = g[k] * w[k] * d loss[k] / d(W[k], bias[k])   # heads minimise their own loss
    dh              = sum_k g[k] * c[k] * d loss[k] / dh           # the shared features

With ``w = 1/A`` on primary heads, ``1/B`` on auxiliary heads, ``c = +1/A`` on primary heads and
``c = -lambda/B`` on auxiliary heads, ``loss.sum().backward()`` gives the shared CNN the gradient of
``mean primary BCE - lambda * mean auxiliary BCE`` (a gradient reversal layer in front of the
auxiliary heads) while every head descends its own BCE. An upstream gradient on ``logits`` is
treated as for a plain linear layer.

Two implementations share this contract: ``reference_head_losses`` (pure PyTorch, the ground truth
for tests) and the fused C++/CUDA operator in ``aal_k8s.ops``. ``head_losses`` picks one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aal_k8s.dtypes import acc_dtype

IMPLS = ("auto", "fused", "reference")


def head_coefficients(
    n_primary: int, n_aux: int, lam: float, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss weights ``w`` and feature-gradient coefficients ``c`` for A primary then B auxiliary heads."""
    if n_primary < 1:
        raise ValueError("at least one primary head is required")
    w = [1.0 / n_primary] * n_primary + ([1.0 / n_aux] * n_aux if n_aux else [])
    c = [1.0 / n_primary] * n_primary + ([-lam / n_aux] * n_aux if n_aux else [])
    return (
        torch.tensor(w, dtype=torch.float32, device=device),
        torch.tensor(c, dtype=torch.float32, device=device),
    )


def _masked_mean_bce(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-column mean BCE-with-logits in z's dtype; columns with no valid row give 0."""
    per = F.binary_cross_entropy_with_logits(z, y.to(z.dtype), reduction="none")
    if mask is None:
        n = torch.full((z.shape[1],), float(z.shape[0]), device=z.device, dtype=z.dtype)
        return per.sum(0) / n.clamp_min(1.0)
    m = mask.to(z.dtype)
    return _select(m, per * m).sum(0) / m.sum(0).clamp_min(1.0)


def _select(m: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """``masked`` where the mask is set, 0 elsewhere: a select, not a product, so that a NaN or
    inf in a masked-out label or feature row (0 * NaN = NaN) cannot reach the loss or gradient."""
    return torch.where(m != 0, masked, torch.zeros((), dtype=masked.dtype, device=masked.device))


class _ReferenceHeads(torch.autograd.Function):
    """Closed-form forward/backward of the head maths, in plain PyTorch ops (fp32 accumulation)."""

    @staticmethod
    def forward(ctx, h, weight, bias, labels, mask, loss_w, feat_c):
        acc = acc_dtype(h.dtype)
        z = h.to(acc) @ weight.to(acc).t() + bias.to(acc)
        loss = _masked_mean_bce(z, labels, mask)
        ctx.save_for_backward(h, weight, bias, labels, mask, loss_w, feat_c, z)
        ctx.has_mask = mask is not None
        return loss, z.to(h.dtype)

    @staticmethod
    def backward(ctx, g_loss, g_logits):
        h, weight, bias, labels, mask, loss_w, feat_c, z = ctx.saved_tensors
        acc = z.dtype
        hf, wf = h.to(acc), weight.to(acc)
        m = mask.to(acc) if ctx.has_mask else torch.ones_like(z)
        n = m.sum(0).clamp_min(1.0)  # [K]
        if g_loss is None:
            g_loss = torch.zeros(z.shape[1], device=z.device, dtype=acc)
        # d loss[k] / d z[b, k] = mask * (sigmoid(z) - y) / n[k]
        dz = _select(m, (torch.sigmoid(z) - labels.to(acc)) * m) / n
        dz_param = dz * (g_loss.to(acc) * loss_w.to(acc))
        dz_feat = dz * (g_loss.to(acc) * feat_c.to(acc))
        if g_logits is not None:
            dz_param = dz_param + g_logits.to(acc)
            dz_feat = dz_feat + g_logits.to(acc)
        dh = dz_feat @ wf
        dW = dz_param.t() @ hf
        db = dz_param.sum(0)
        return dh.to(h.dtype), dW.to(weight.dtype), db.to(bias.dtype), None, None, None, None


def reference_head_losses(h, weight, bias, labels, loss_w, feat_c, mask=None):
    """Pure-PyTorch ground truth: ``(loss [K] fp32 (fp64 for fp64 h), logits [B, K] in h's dtype)``."""
    return _ReferenceHeads.apply(h, weight, bias, labels, mask, loss_w, feat_c)


def head_losses(h, weight, bias, labels, loss_w, feat_c, mask=None, impl: str = "auto"):
    """The trainer's single dispatch point for the head computation.

    ``impl="auto"`` uses the fused extension when it is built and falls back to the reference
    (``aal_k8s.ops`` warns once); ``"fused"`` requires the extension; ``"reference"`` never uses it.
    """
    if impl not in IMPLS:
        raise ValueError(f"head implementation {impl!r} is not one of {IMPLS}")
    if impl != "reference":
        from aal_k8s import ops

        if ops.extension_available():
            if h.dtype != weight.dtype and not torch.is_autocast_enabled(h.device.type):
                # bf16 features from an autocast backbone with fp32 heads (the trainer's CUDA
                # default): the op takes one dtype, so upcast h (exact), as the reference does
                h = h.to(weight.dtype)
            return ops.fused_heads(h, weight, bias, labels, loss_w, feat_c, mask)
        if impl == "fused":
            raise RuntimeError(f"the fused head extension is not built: {ops.extension_error()}")
        ops.warn_fallback()
    return reference_head_losses(h, weight, bias, labels, loss_w, feat_c, mask)

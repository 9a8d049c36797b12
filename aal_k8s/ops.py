"""Python face of the fused head operator (``torch.ops.aal_k8s.fused_heads``).

The C++/CUDA extension (``aal_k8s._C``, optionally ``aal_k8s._C_cuda``) defines two operators:

    fused_heads(h, weight, bias, labels, loss_w, feat_c, mask=None)
        -> (loss [K], logits [B, K], residual [B, K], count [K])
    fused_heads_backward(grad_loss?, grad_logits?, residual, count, h, weight, loss_w, feat_c)
        -> (grad_h, grad_weight, grad_bias)

``residual = (sigmoid(z) - y) * mask`` and ``count = sum_b mask`` (the number of labelled rows per
head) are what backward needs, so the forward hands them out instead of backward recomputing the
logits. They are kept in the accumulation dtype (float32, or float64 for float64 inputs).

This module adds the Python-side registrations that make the operator a first-class PyTorch op:
``register_fake`` (shape propagation for torch.compile / meta tensors), ``register_autograd``
(backward is the registered ``fused_heads_backward`` op, so it is traceable and graph-capturable);
the autocast rule is registered in C++ (see csrc/fused_heads.cpp): under autocast ``h``, ``weight``
and ``bias`` are cast to the autocast dtype like ``F.linear``, accumulation stays fp32, and
labels/mask/``loss_w``/``feat_c`` are never down-cast.

In eager mode ``fused_heads`` applies the same ``setup_context``/``backward`` through a plain
``torch.autograd.Function`` (torch.library's generic adapter re-binds arguments against the schema
in Python on every call, which costs as much as the kernel itself at B=256 on a small CPU); under
``torch.compile`` it calls the registered op, whose autograd formula the compiler traces.

The op is differentiable once: a double backward (``create_graph=True`` and then differentiating
the gradients) raises. Masked-out elements are selected away, not multiplied by 0 (see
``aal_k8s.heads`` for the one case a NaN still gets through: a NaN feature row reaches ``dW``).

``fused_heads(...)`` returns ``(loss, logits)`` with the contract of
``aal_k8s.heads.reference_head_losses``. Use ``aal_k8s.heads.head_losses`` in training code: it
falls back to the reference with one warning when the extension is missing.
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any

import torch
from torch import Tensor

from aal_k8s.dtypes import acc_dtype

_OP_NAMESPACE = "aal_k8s"
_FALLBACK_MESSAGE = (
    "aal_k8s: the fused head extension (aal_k8s._C) is not available ({err}); using the "
    "pure-PyTorch reference for the head losses, which is correct but slower. Build it with "
    "`pip install --no-build-isolation .` (see csrc/README.md)."
)

_ext_error: str | None = None  # None: loaded; str: why the CPU extension could not be loaded
_cuda_ext_error: str | None = None
_warned = False


def _load() -> None:
    global _ext_error, _cuda_ext_error
    if os.environ.get("AAL_K8S_DISABLE_EXT", "").strip() in {"1", "true", "yes"}:
        _ext_error = "disabled by AAL_K8S_DISABLE_EXT"
        _cuda_ext_error = _ext_error
        return
    try:
        importlib.import_module("aal_k8s._C")
    except (ImportError, OSError) as e:  # OSError: an unloadable .so (ABI/torch mismatch)
        _ext_error = f"{type(e).__name__}: {e}"
        _cuda_ext_error = "the CPU extension, which defines the schemas, is not loaded"
        return
    try:
        # Loading only registers the CUDA kernels; it needs the CUDA runtime libraries that torch
        # itself links, not a GPU or a driver, so this succeeds on CPU-only hosts with CUDA torch.
        importlib.import_module("aal_k8s._C_cuda")
    except (ImportError, OSError) as e:
        _cuda_ext_error = f"{type(e).__name__}: {e}"


_load()


def extension_available() -> bool:
    """True when the compiled operator is registered (its CPU kernels at least)."""
    return _ext_error is None


def extension_error() -> str:
    """Why the extension is unavailable ('' when it is available)."""
    return _ext_error or ""


def cuda_kernels_available() -> bool:
    """True when the CUDA implementation of the operator is registered."""
    return _ext_error is None and _cuda_ext_error is None


def warn_fallback() -> None:
    """Warn, once per process, that the head losses run on the pure-PyTorch reference."""
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(_FALLBACK_MESSAGE.format(err=extension_error() or "unknown"), RuntimeWarning,
                  stacklevel=3)


def describe() -> dict[str, Any]:
    """Which head-loss path is active, for ``aal-k8s doctor``."""
    info: dict[str, Any] = {
        "extension_built": extension_available(),
        "extension_error": extension_error() or None,
        "cuda_kernels": cuda_kernels_available(),
        "cuda_kernels_error": None if cuda_kernels_available() else _cuda_ext_error,
        "cuda_device": torch.cuda.is_available(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }
    if not extension_available():
        active = "reference (pure PyTorch fallback)"
    elif cuda_kernels_available() and torch.cuda.is_available():
        active = "fused (CPU and CUDA kernels)"
    elif torch.cuda.is_available():
        active = "fused on CPU; CUDA tensors would fail (CUDA kernels not built)"
    else:
        active = "fused (CPU kernels)"
    info["active"] = active
    return info


def fused_heads(
    h: Tensor,
    weight: Tensor,
    bias: Tensor,
    labels: Tensor,
    loss_w: Tensor,
    feat_c: Tensor,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Fused K-head BCE with per-head gradient reversal: ``(loss [K], logits [B, K])``.

    ``loss`` is float32 (float64 for float64 inputs); ``logits`` has ``h``'s dtype. ``h``,
    ``weight`` and ``bias`` must share a dtype (float16, bfloat16, float32 or float64) outside
    autocast. ``labels`` and ``mask`` may be any dtype holding 0/1 (float32 avoids a conversion).
    """
    if not extension_available():
        raise RuntimeError(f"the fused head extension is not built: {extension_error()}")
    if (
        torch.is_grad_enabled()
        and (h.requires_grad or weight.requires_grad or bias.requires_grad)
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled(h.device.type)
    ):
        # Eager training: the same setup_context/backward as the registered autograd formula,
        # applied through a plain autograd.Function. torch.library's generic adapter re-binds
        # every call against the schema in Python, which costs about as much as the whole
        # B=256 kernel on a small CPU. Under torch.compile the registered formula is used, and
        # under autocast too, so that the cast happens before autograd records the op exactly
        # as for direct torch.ops calls.
        loss, logits, _, _ = _FusedHeadsFunction.apply(
            h, weight, bias, labels, loss_w, feat_c, mask
        )
    else:
        loss, logits, _, _ = torch.ops.aal_k8s.fused_heads.default(
            h, weight, bias, labels, loss_w, feat_c, mask
        )
    return loss, logits


def _setup_context(ctx, inputs, output) -> None:
    h, weight, _bias, _labels, loss_w, feat_c, _mask = inputs
    _loss, _logits, residual, count = output
    ctx.save_for_backward(residual, count, h, weight, loss_w, feat_c)
    ctx.mark_non_differentiable(residual, count)
    # Unused outputs then reach backward as None rather than as materialised zeros, which lets
    # the kernel skip the [B, K] upstream-logits term in the usual loss-only case.
    ctx.set_materialize_grads(False)


_TWICE = b"aal_k8s::fused_heads is differentiable once: its backward has no derivative (double backward)"


def _backward(ctx, grad_loss, grad_logits, _grad_residual, _grad_count):
    """The backward formula. Under ``create_graph=True`` the gradients it returns raise when they are
    differentiated again: the backward op has no derivative, and without this autograd would warn
    and hand out None for the second derivative. (``once_differentiable`` only does this when the
    incoming gradients require grad, not when h or the weights do.)"""
    with torch.no_grad():
        grads = _backward_formula(ctx, grad_loss, grad_logits)
    inputs = [t for t in (*ctx.saved_tensors, grad_loss, grad_logits) if t is not None and t.requires_grad]
    present = [i for i, g in enumerate(grads) if g is not None]
    if not torch.is_grad_enabled() or not inputs or not present:
        return grads
    # an error node whose edges lead to everything the gradients depend on, so that the engine
    # runs it (and raises) whichever of them is differentiated
    n = len(present) + len(inputs)
    raising = torch._C._functions.DelayedError(_TWICE, n)(*(grads[i].detach() for i in present), *inputs)
    out = list(grads)
    for i, g in zip(present, raising):
        out[i] = g
    return tuple(out)


def _backward_formula(ctx, grad_loss, grad_logits):
    residual, count, h, weight, loss_w, feat_c = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    if (grad_loss is None and grad_logits is None) or not (need_h or need_w or need_b):
        return None, None, None, None, None, None, None
    dh, dW, db = torch.ops.aal_k8s.fused_heads_backward.default(
        grad_loss, grad_logits, residual, count, h, weight, loss_w, feat_c
    )
    return (
        dh if need_h else None,
        dW if need_w else None,
        db if need_b else None,
        None,
        None,
        None,
        None,
    )


class _FusedHeadsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, labels, loss_w, feat_c, mask):
        # Straight to the device kernel: this Function is the autograd layer, and the registered
        # one would only run its no-grad Python path here (torch.library does the same).
        with torch._C._AutoDispatchBelowAutograd():
            out = torch.ops.aal_k8s.fused_heads.default(
                h, weight, bias, labels, loss_w, feat_c, mask
            )
        _setup_context(ctx, (h, weight, bias, labels, loss_w, feat_c, mask), out)
        return out

    @staticmethod
    def backward(ctx, *grads):
        return _backward(ctx, *grads)


_FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_fake(op: str, h: Tensor, **others: Tensor | None) -> None:
    """The device and dtype rules of csrc/fused_heads.h for the fake (meta) kernels. Without them a
    mix of devices dispatches here (Meta outranks CPU) and returns uninitialised tensors on h's
    device instead of the error the real kernels give."""
    torch._check(h.dtype in _FEATURE_DTYPES,
                 lambda: f"{op}: h must be float16, bfloat16, float32 or float64, got {h.dtype}")
    for name, t in others.items():
        if t is not None:
            torch._check(t.device == h.device, lambda: f"{op}: {name} is on {t.device} but h is on {h.device}")


def _register() -> None:
    fwd = f"{_OP_NAMESPACE}::fused_heads"
    bwd = f"{_OP_NAMESPACE}::fused_heads_backward"

    @torch.library.register_fake(fwd)
    def _fused_heads_fake(h, weight, bias, labels, loss_w, feat_c, mask=None):
        torch._check(h.dim() == 2 and weight.dim() == 2, lambda: "h [B, D] and weight [K, D]")
        torch._check(weight.shape[1] == h.shape[1], lambda: "weight and h disagree on D")
        _check_fake("fused_heads", h, weight=weight, bias=bias, labels=labels, loss_w=loss_w,
                    feat_c=feat_c, mask=mask)
        torch._check(h.dtype == weight.dtype == bias.dtype, lambda: "h/weight/bias dtypes differ")
        B, K = h.shape[0], weight.shape[0]
        acc = acc_dtype(h.dtype)
        return (
            h.new_empty((K,), dtype=acc),
            h.new_empty((B, K)),
            h.new_empty((B, K), dtype=acc),
            h.new_empty((K,), dtype=acc),
        )

    @torch.library.register_fake(bwd)
    def _fused_heads_backward_fake(grad_loss, grad_logits, residual, count, h, weight, loss_w,
                                   feat_c):
        _check_fake("fused_heads_backward", h, grad_loss=grad_loss, grad_logits=grad_logits,
                    residual=residual, count=count, weight=weight, loss_w=loss_w, feat_c=feat_c)
        return (
            torch.empty_like(h, memory_format=torch.contiguous_format),
            torch.empty_like(weight, memory_format=torch.contiguous_format),
            weight.new_empty((weight.shape[0],)),
        )

    torch.library.register_autograd(fwd, _backward, setup_context=_setup_context)


if extension_available():
    _register()

"""The head maths of paper eq. 6/10/11, checked against autograd on the plain losses."""

import pytest
import torch
import torch.nn.functional as F

from aal_k8s.heads import head_coefficients, head_losses, reference_head_losses


def _inputs(b=8, d=5, k=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, d, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(k, d, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(k, generator=g, dtype=dtype, requires_grad=True)
    y = (torch.rand(b, k, generator=g) < 0.5).to(dtype)
    return h, w, bias, y


def _plain_grads(h, w, bias, y, k):
    """Autograd gradients of head k's plain mean BCE with respect to (h, W, bias)."""
    z = h @ w.t() + bias
    loss = F.binary_cross_entropy_with_logits(z[:, k], y[:, k])
    return torch.autograd.grad(loss, (h, w, bias))


def test_features_get_minus_lambda_times_the_auxiliary_gradient_and_heads_the_plain_one():
    h, w, bias, y = _inputs(k=2)
    lam = 0.3
    loss_w, feat_c = head_coefficients(1, 1, lam)
    loss, _ = reference_head_losses(h, w, bias, y, loss_w.double(), feat_c.double())
    dh, dw, db = torch.autograd.grad(loss.sum(), (h, w, bias))
    gp, ga = _plain_grads(h, w, bias, y, 0), _plain_grads(h, w, bias, y, 1)
    torch.testing.assert_close(dh, gp[0] - lam * ga[0])  # the shared CNN: primary - lambda * aux
    torch.testing.assert_close(dw[0], gp[1][0])  # primary head: its own BCE
    torch.testing.assert_close(dw[1], ga[1][1])  # auxiliary head: minimises its own BCE, not reversed
    torch.testing.assert_close(db, gp[2] + ga[2])


def test_group_weighting_follows_eq_10_11():
    h, w, bias, y = _inputs(k=5)
    lam, n_p, n_a = 0.5, 2, 3
    loss_w, feat_c = head_coefficients(n_p, n_a, lam)
    loss, _ = reference_head_losses(h, w, bias, y, loss_w.double(), feat_c.double())
    dh, dw, _ = torch.autograd.grad(loss.sum(), (h, w, bias))
    grads = [_plain_grads(h, w, bias, y, k) for k in range(5)]
    expect_dh = sum(grads[k][0] for k in range(n_p)) / n_p - lam * sum(grads[k][0] for k in range(n_p, 5)) / n_a
    torch.testing.assert_close(dh, expect_dh)
    for k in range(5):
        scale = 1 / n_p if k < n_p else 1 / n_a
        torch.testing.assert_close(dw[k], scale * grads[k][1][k])


def test_loss_values_are_per_head_mean_bce():
    h, w, bias, y = _inputs()
    loss_w, feat_c = head_coefficients(3, 0, 0.0)
    loss, logits = reference_head_losses(h, w, bias, y, loss_w, feat_c)
    z = h @ w.t() + bias
    torch.testing.assert_close(logits, z)
    expect = F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(0)
    torch.testing.assert_close(loss.double(), expect)


def test_without_auxiliary_heads_it_is_ordinary_multi_task_backprop():
    h, w, bias, y = _inputs(k=2)
    loss_w, feat_c = head_coefficients(2, 0, 0.0)
    loss, _ = reference_head_losses(h, w, bias, y, loss_w.double(), feat_c.double())
    got = torch.autograd.grad(loss.sum(), (h, w, bias))
    z = h @ w.t() + bias
    plain = F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(0).mean()
    want = torch.autograd.grad(plain, (h, w, bias))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_masked_labels_do_not_count():
    h, w, bias, y = _inputs(b=6, k=2)
    mask = torch.ones(6, 2, dtype=torch.bool)
    mask[:3, 1] = False
    loss_w, feat_c = head_coefficients(2, 0, 0.0)
    loss, _ = reference_head_losses(h, w, bias, y, loss_w.double(), feat_c.double(), mask)
    z = h @ w.t() + bias
    expect = F.binary_cross_entropy_with_logits(z[3:, 1], y[3:, 1])
    torch.testing.assert_close(loss[1].double(), expect)


def test_unknown_implementation_is_rejected():
    h, w, bias, y = _inputs()
    loss_w, feat_c = head_coefficients(3, 0, 0.0)
    with pytest.raises(ValueError, match="not one of"):
        head_losses(h, w, bias, y, loss_w, feat_c, impl="cuda-magic")


def test_the_fused_path_takes_bf16_features_with_fp32_heads_as_the_trainer_gives_them():
    from aal_k8s import ops

    if not ops.extension_available():
        pytest.skip(f"fused extension not built: {ops.extension_error()}")
    h, w, bias, y = _inputs(b=16, d=32, k=2, dtype=torch.float32)
    hb = h.detach().to(torch.bfloat16).requires_grad_()  # what a bf16-autocast backbone returns
    loss_w, feat_c = head_coefficients(1, 1, 0.3)
    loss, _ = head_losses(hb, w, bias, y, loss_w, feat_c, impl="fused")
    dh, dw = torch.autograd.grad(loss.sum(), (hb, w))
    hf = hb.detach().float().requires_grad_()
    ref, _ = reference_head_losses(hf, w, bias, y, loss_w, feat_c)
    ref_dh, ref_dw = torch.autograd.grad(ref.sum(), (hf, w))
    assert dh.dtype == torch.bfloat16 and dw.dtype == torch.float32
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dw, ref_dw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dh, ref_dh.to(torch.bfloat16))

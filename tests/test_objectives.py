"""GAN / WGAN adversarial objectives (paper eq. 4/5 and the Table 1 ablation), checked against
gradients written out by hand in closed form, not against autograd on the same expression."""

import itertools
import math

import pytest
import torch
from torch import nn

from aal_k8s.objectives import clip_critic_, dann_lambda, gan_losses, wgan_losses

CASES = [(2, 1), (3, 1), (4, 2)]  # (K, n_primary)


def _inputs(k, n=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(k, d, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(k, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(n, k, generator=g) < 0.5).double()
    y[0], y[1] = 1.0, 0.0  # both classes in every column
    return h, w, bias, y


def _sig(z):
    return 1.0 / (1.0 + torch.exp(-z))


def _bce(z, y):
    """Elementwise BCE-with-logits, -y log s(z) - (1-y) log(1-s(z)) = log(1+e^z) - y z."""
    return torch.log1p(torch.exp(z)) - y * z


def _grads(fn, h, w, bias, y, a, lam):
    per_head, total = fn(h, w, bias, y, a, lam)
    return per_head, total, torch.autograd.grad(total, (h, w, bias))


def _hand_gan(h, w, bias, y, a, lam):
    """(per_head, dh, dW, dbias) of eq. 4 (features, primary) and eq. 5 (auxiliary), by hand."""
    h, w, bias = h.detach(), w.detach(), bias.detach()
    n, k = y.shape
    nb = k - a
    z = h @ w.t() + bias
    r_p = (_sig(z[:, :a]) - y[:, :a]) / (n * a)  # d mean_a BCE / dz
    r_fool = (_sig(z[:, a:]) - (1.0 - y[:, a:])) / (n * nb)  # d mean_b BCE(z, 1 - y) / dz
    r_aux = (_sig(z[:, a:]) - y[:, a:]) / (n * nb)  # d mean_b BCE(z, y) / dz
    dh = r_p @ w[:a] + lam * r_fool @ w[a:]
    dw = torch.cat([r_p.t() @ h, r_aux.t() @ h])
    db = torch.cat([r_p.sum(0), r_aux.sum(0)])
    return _bce(z, y).mean(0), dh, dw, db


def _hand_wgan(h, w, bias, y, a, lam):
    """(per_head, dh, dW, dbias) of the WGAN objective by hand; s[i, b] = d gap_b / d f_ib."""
    h, w, bias = h.detach(), w.detach(), bias.detach()
    n, k = y.shape
    nb = k - a
    z = h @ w.t() + bias
    r_p = (_sig(z[:, :a]) - y[:, :a]) / (n * a)
    s = torch.zeros(n, nb, dtype=h.dtype)
    gaps = torch.zeros(nb, dtype=h.dtype)
    for b in range(nb):
        pos = y[:, a + b] > 0.5
        if pos.any() and (~pos).any():
            s[:, b] = pos.double() / pos.sum() - (~pos).double() / (~pos).sum()
            gaps[b] = z[pos, a + b].mean() - z[~pos, a + b].mean()
    dh = r_p @ w[:a] + (lam / nb) * s @ w[a:]
    dw = torch.cat([r_p.t() @ h, -(s.t() @ h) / nb])
    db = torch.cat([r_p.sum(0), -s.sum(0) / nb])
    per_head = torch.cat([_bce(z[:, :a], y[:, :a]).mean(0), gaps])
    return per_head, dh, dw, db


# ---- dann_lambda ---------------------------------------------------------------------------


def test_dann_lambda_rises_from_zero_to_about_lambda_following_the_formula():
    lam = 0.3
    assert dann_lambda(lam, 0.0) == 0.0
    # 2 lam / (1 + e^-x) - lam = lam tanh(x / 2)
    assert dann_lambda(lam, 0.5) == pytest.approx(lam * math.tanh(10.0 * 0.5 / 2), rel=1e-12)
    assert dann_lambda(lam, 1.0) == pytest.approx(lam * math.tanh(5.0), rel=1e-12)
    assert dann_lambda(lam, 1.0) == pytest.approx(lam, rel=1e-3)
    assert dann_lambda(lam, 0.5, alpha=2.0) == pytest.approx(lam * math.tanh(0.5), rel=1e-12)


def test_dann_lambda_is_monotonic_and_clamps_progress_into_unit_interval():
    values = [dann_lambda(1.0, i / 50) for i in range(51)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert dann_lambda(1.0, -0.5) == 0.0
    assert dann_lambda(1.0, 7.0) == dann_lambda(1.0, 1.0)
    with pytest.raises(ValueError):
        dann_lambda(1.0, float("nan"))


# ---- GAN (eq. 4/5) -------------------------------------------------------------------------


@pytest.mark.parametrize("k,a", CASES)
def test_gan_gradients_and_per_head_losses_match_the_closed_form(k, a):
    h, w, bias, y = _inputs(k)
    lam = 0.7
    per_head, total, (dh, dw, db) = _grads(gan_losses, h, w, bias, y, a, lam)
    want_per_head, want_dh, want_dw, want_db = _hand_gan(h, w, bias, y, a, lam)
    torch.testing.assert_close(per_head, want_per_head)
    torch.testing.assert_close(dh, want_dh)
    torch.testing.assert_close(dw, want_dw)
    torch.testing.assert_close(db, want_db)
    assert per_head.shape == (k,) and not per_head.requires_grad and total.dim() == 0


def test_gan_feature_gradient_pushes_towards_flipped_labels():
    h, w, bias, y = _inputs(2)
    lam = 0.5
    dh_lam = _grads(gan_losses, h, w, bias, y, 1, lam)[2][0]
    dh_0 = _grads(gan_losses, h, w, bias, y, 1, 0.0)[2][0]
    adv = (dh_lam - dh_0) / lam  # the auxiliary term's share of the feature gradient
    h2 = h.detach() - 0.1 * adv
    z, z2 = h.detach() @ w[1].detach() + bias[1].detach(), h2 @ w[1].detach() + bias[1].detach()
    assert _bce(z2, 1 - y[:, 1]).mean() < _bce(z, 1 - y[:, 1]).mean()  # fools the auxiliary head
    assert _bce(z2, y[:, 1]).mean() > _bce(z, y[:, 1]).mean()


@pytest.mark.parametrize("k,a", CASES)
def test_gan_with_lambda_zero_gives_features_only_the_primary_gradient(k, a):
    h, w, bias, y = _inputs(k)
    dh = _grads(gan_losses, h, w, bias, y, a, 0.0)[2][0]
    z = (h @ w.t() + bias).detach()
    r_p = (_sig(z[:, :a]) - y[:, :a]) / (y.shape[0] * a)
    torch.testing.assert_close(dh, r_p @ w[:a].detach())


@pytest.mark.parametrize("k,a", CASES)
def test_gan_head_gradients_do_not_depend_on_lambda(k, a):
    # the auxiliary heads learn only from eq. 5 (no gradient from the fooling term) and the
    # primary heads only from their own BCE
    h, w, bias, y = _inputs(k)
    _, _, (_, dw0, db0) = _grads(gan_losses, h, w, bias, y, a, 0.0)
    for lam in (0.3, 5.0):
        _, _, (_, dw, db) = _grads(gan_losses, h, w, bias, y, a, lam)
        assert torch.equal(dw, dw0) and torch.equal(db, db0)


def test_gan_auxiliary_term_gives_features_nothing_at_lambda_zero_even_with_a_wrong_head():
    # eq. 5 runs on detached features: a badly wrong auxiliary head must not move h at lam = 0
    h, w, bias, y = _inputs(2)
    dh = _grads(gan_losses, h, w, bias, y, 1, 0.0)[2][0]
    w_bad = w.detach().clone()
    w_bad[1] *= 100.0
    w_bad.requires_grad_(True)
    dh_bad = _grads(gan_losses, h, w_bad, bias, y, 1, 0.0)[2][0]
    assert torch.equal(dh, dh_bad)


@pytest.mark.parametrize("fn", [gan_losses, wgan_losses])
def test_objectives_require_a_primary_and_an_auxiliary_head_and_matching_shapes(fn):
    h, w, bias, y = _inputs(2)
    with pytest.raises(ValueError, match="primary and one auxiliary"):
        fn(h, w, bias, y, 0, 0.5)
    with pytest.raises(ValueError, match="primary and one auxiliary"):
        fn(h, w, bias, y, 2, 0.5)
    with pytest.raises(ValueError, match="shape"):
        fn(h, w, bias, y[:, :1], 1, 0.5)


# ---- WGAN ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k,a", CASES)
def test_wgan_gradients_and_per_head_values_match_the_closed_form(k, a):
    h, w, bias, y = _inputs(k)
    lam = 0.7
    per_head, total, (dh, dw, db) = _grads(wgan_losses, h, w, bias, y, a, lam)
    want_per_head, want_dh, want_dw, want_db = _hand_wgan(h, w, bias, y, a, lam)
    torch.testing.assert_close(per_head, want_per_head)  # primary BCE, then the critics' gaps
    torch.testing.assert_close(dh, want_dh)
    torch.testing.assert_close(dw, want_dw)
    torch.testing.assert_close(db, want_db)
    # the bias cancels in the gap: zero up to rounding (1/n_pos summed n_pos times, minus the same)
    torch.testing.assert_close(db[a:], torch.zeros(k - a, dtype=db.dtype), rtol=0, atol=1e-15)
    assert not per_head.requires_grad and total.dim() == 0


def test_wgan_gap_is_zero_and_everything_finite_when_a_class_is_absent():
    h, w, bias, y = _inputs(3)
    y[:, 1] = 1.0  # auxiliary attribute 1: nobody has y = 0
    y[:, 2] = 0.0  # auxiliary attribute 2: nobody has y = 1
    per_head, total, (dh, dw, db) = _grads(wgan_losses, h, w, bias, y, 1, 0.7)
    assert per_head[1] == 0.0 and per_head[2] == 0.0
    for t in (per_head, total, dh, dw, db):
        assert torch.isfinite(t).all()
    assert torch.equal(dw[1:], torch.zeros_like(dw[1:])) and torch.equal(db[1:], torch.zeros(2, dtype=db.dtype))
    z = (h @ w.t() + bias).detach()
    r_p = (_sig(z[:, :1]) - y[:, :1]) / y.shape[0]
    torch.testing.assert_close(dh, r_p @ w[:1].detach())  # no adversarial signal for h


def test_wgan_players_move_the_gap_in_opposite_directions():
    h, w, bias, y = _inputs(2)
    lam = 1.0
    per_head, _, (dh, dw, _) = _grads(wgan_losses, h, w, bias, y, 1, lam)
    dh_0 = _grads(wgan_losses, h, w, bias, y, 1, 0.0)[2][0]

    def gap(hh, ww):
        f = hh @ ww[1] + bias[1].detach()
        pos = y[:, 1] > 0.5
        return f[pos].mean() - f[~pos].mean()

    h0, w0 = h.detach(), w.detach()
    assert gap(h0 - 0.1 * (dh - dh_0), w0) < per_head[1]  # features make the groups closer
    assert gap(h0, w0 - 0.1 * dw) > per_head[1]  # the critic separates them further


@pytest.mark.parametrize("k,a", CASES)
def test_wgan_critic_gets_no_gradient_from_the_feature_term_and_features_none_from_the_critic_term(k, a):
    h, w, bias, y = _inputs(k)
    _, _, (dh0, dw0, db0) = _grads(wgan_losses, h, w, bias, y, a, 0.0)
    _, _, (_, dw, db) = _grads(wgan_losses, h, w, bias, y, a, 2.0)
    assert torch.equal(dw, dw0) and torch.equal(db, db0)
    z = (h @ w.t() + bias).detach()
    r_p = (_sig(z[:, :a]) - y[:, :a]) / (y.shape[0] * a)
    torch.testing.assert_close(dh0, r_p @ w[:a].detach())


@pytest.mark.parametrize("fn", [gan_losses, wgan_losses])
def test_bf16_features_accumulate_in_fp32(fn):
    h, w, bias, y = _inputs(3)
    hb = h.detach().bfloat16().requires_grad_(True)
    wf, bf = w.detach().float().requires_grad_(True), bias.detach().float().requires_grad_(True)
    per_head, total = fn(hb, wf, bf, y.float(), 1, 0.5)
    assert per_head.dtype == torch.float32 and total.dtype == torch.float32
    total.backward()
    assert hb.grad.dtype == torch.bfloat16 and wf.grad.dtype == torch.float32


# ---- clip_critic_ --------------------------------------------------------------------------


def test_clip_critic_clamps_auxiliary_rows_and_leaves_primary_rows_bitwise_unchanged():
    g = torch.Generator().manual_seed(1)
    weight = nn.Parameter(3.0 * torch.randn(4, 6, generator=g))
    bias = nn.Parameter(3.0 * torch.randn(4, generator=g))
    w_before, b_before = weight.detach().clone(), bias.detach().clone()
    c = 0.5
    clip_critic_(weight, bias, 2, c)
    assert torch.equal(weight[:2], w_before[:2]) and torch.equal(bias[:2], b_before[:2])
    want_w = torch.where(w_before[2:] > c, c, torch.where(w_before[2:] < -c, -c, w_before[2:]))
    want_b = torch.where(b_before[2:] > c, c, torch.where(b_before[2:] < -c, -c, b_before[2:]))
    assert torch.equal(weight[2:], want_w) and torch.equal(bias[2:], want_b)
    assert (w_before[2:].abs() > c).any()  # the case actually clips something
    assert weight.grad_fn is None and weight.requires_grad
    with pytest.raises(ValueError):
        clip_critic_(weight, bias, 2, 0.0)

"""The GAN and Wasserstein-GAN adversarial objectives of the ablation (paper section 3.2, 4.2.1).

The default adversarial mode (``aal_k8s.heads``) is gradient reversal, paper eq. 6 / 10 / 11. The
paper also trains with the GAN formulation it derives first (eq. 4 / 5, its way of optimising the
min-max eq. 3, eq. 9 for groups) and with a Wasserstein-GAN loss (Table 1). This module gives both, generalised to groups of attributes like appendix A.3, with
the head layout of ``aal_k8s.model``: one ``[K, D]`` weight and ``[K]`` bias whose first
``n_primary`` = A rows are the primary heads and the remaining B = K - A rows the auxiliary heads.

Notation: N images in the batch, features ``h [N, D]``, logits ``z[i, k] = h[i] . W[k] + bias[k]``,
``L(z, y)`` the BCE-with-logits, ``mean_a`` / ``mean_b`` means over the primary / auxiliary heads
(the 1/A and 1/B weights of eq. 9-11) and ``E_i`` the mean over the batch.

GAN (eq. 4/5), ``gan_losses``::

    features, primary heads:  min  E_i [ mean_a L(z_ia, y_ia) + lam * mean_b L(z_ib, 1 - y_ib) ]   (eq. 4)
    auxiliary heads:          min  E_i [ mean_b L(z_ib, y_ib) ]                                    (eq. 5)

Eq. 4 trains the representation to make the auxiliary classifier predict the *flipped* label,
i.e. to fool it; this is the non-saturating form of maximising the auxiliary loss (Goodfellow et al.
2014): its gradient in the logit is largest when the auxiliary classifier is confidently right,
exactly where the gradient of eq. 6's ``- lam * L(z_ib, y_ib)`` (gradient reversal) vanishes.

WGAN, ``wgan_losses``: the auxiliary rows become linear Wasserstein critics
``f_b(h) = h . W_b + bias_b`` (no sigmoid). For auxiliary attribute b the critic's estimate of the
Wasserstein-1 distance between the feature distributions of the images with y_b = 1 and y_b = 0 is

    gap_b = E_{i: y_ib = 1} f_b(h_i) - E_{i: y_ib = 0} f_b(h_i)     (0 if either group is empty)

    critics:                  min  - mean_b gap_b                                (maximise the estimate)
    features, primary heads:  min  E_i mean_a L(z_ia, y_ia) + lam * mean_b gap_b  (make the groups
                                                                                 indistinguishable)

The critics' Lipschitz constraint is weight clipping, ``clip_critic_``, applied after each step.
Note ``bias_b`` cancels in ``gap_b``: the critic bias gets a zero gradient (up to rounding).

How one call serves both players: each returns ``(per_head, total)``. ``total`` is a surrogate
whose value means little but whose ``.backward()`` gives every parameter the gradient of its own
player's objective: the features' term is computed with the auxiliary rows of ``weight``/``bias``
detached, the auxiliary heads' term on ``h.detach()``. A single ``opt.zero_grad(); total.backward();
opt.step()`` per batch then updates both players *simultaneously* from the same forward pass
(each sees the other as it was before the step), rather than alternating the two minimisations of
eq. 4/5 with separate forward passes or taking several critic steps per feature step (Arjovsky et
al. 2017 use 5). We chose this because it costs one forward/backward per batch like the gradient
reversal mode and fits the training loop's single optimizer; alternating schedules are not implemented.

Accumulation is in fp32 (fp64 for fp64 inputs, so tests can be exact), as in ``aal_k8s.heads``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dann_lambda(lam: float, progress: float, alpha: float = 10.0) -> float:
    """The DANN warm-up (Ganin & Lempitsky 2015): ``2 lam / (1 + exp(-alpha p)) - lam``.

    ``progress`` p (fraction of training done) is clamped into [0, 1]: 0 at p = 0, rising
    monotonically to ``lam * tanh(alpha / 2)`` (about 0.9999 lam for alpha = 10) at p = 1, so the
    adversary's noisy early gradient does not swamp the primary task's first steps.
    """
    if math.isnan(progress):
        raise ValueError("progress is NaN")
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 * lam / (1.0 + math.exp(-alpha * p)) - lam


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _split(h, weight, bias, labels, n_primary):
    """Checked, upcast inputs: ``(h, W, bias, y)`` in the accumulation dtype."""
    if h.dim() != 2 or weight.dim() != 2 or bias.dim() != 1 or labels.dim() != 2:
        raise ValueError("expected h [N, D], weight [K, D], bias [K], labels [N, K]")
    k = weight.shape[0]
    if weight.shape[1] != h.shape[1] or bias.shape[0] != k or labels.shape != (h.shape[0], k):
        raise ValueError(
            f"shape mismatch: h {tuple(h.shape)}, weight {tuple(weight.shape)}, "
            f"bias {tuple(bias.shape)}, labels {tuple(labels.shape)}"
        )
    if n_primary < 1 or n_primary >= k:
        raise ValueError(
            f"the adversarial objectives need at least one primary and one auxiliary head "
            f"(n_primary={n_primary}, K={k})"
        )
    acc = _acc_dtype(h)
    return h.to(acc), weight.to(acc), bias.to(acc), labels.to(acc)


def _primary_bce(hf, wf, bf, y, n_primary):
    """Per-head mean BCE of the primary heads ``[A]`` (differentiable in h and the primary rows)."""
    z = hf @ wf[:n_primary].t() + bf[:n_primary]
    return F.binary_cross_entropy_with_logits(z, y[:, :n_primary], reduction="none").mean(0)


def gan_losses(h, weight, bias, labels, n_primary: int, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAN-style objective (eq. 4/5): ``(per_head, total)``.

    ``per_head`` [K], detached: every head's plain mean BCE against its *true* labels (for the
    auxiliary heads that is the eq. 5 loss, not the flipped one). ``total``: scalar; its backward
    gives h and the primary rows the gradient of ``mean_a BCE(z_a, y_a) + lam * mean_b BCE(z_b,
    1 - y_b)`` and the auxiliary rows that of ``mean_b BCE(z_b, y_b)`` on ``h.detach()``.
    ``labels`` [N, K] float 0/1.
    """
    hf, wf, bf, y = _split(h, weight, bias, labels, n_primary)
    a = n_primary
    primary = _primary_bce(hf, wf, bf, y, a)
    y_aux = y[:, a:]
    # features' view of the auxiliary heads: frozen classifier, flipped labels (eq. 4)
    z_fool = hf @ wf[a:].detach().t() + bf[a:].detach()
    fool = F.binary_cross_entropy_with_logits(z_fool, 1.0 - y_aux)
    # auxiliary heads' view: frozen features, true labels (eq. 5)
    z_aux = hf.detach() @ wf[a:].t() + bf[a:]
    aux = F.binary_cross_entropy_with_logits(z_aux, y_aux, reduction="none").mean(0)
    total = primary.mean() + lam * fool + aux.mean()
    per_head = torch.cat([primary, aux]).detach()
    return per_head, total


def _gaps(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``gap_b`` [B] from critic outputs ``f`` [N, B] and 0/1 labels ``y`` [N, B]."""
    pos = (y > 0.5).to(f.dtype)
    neg = 1.0 - pos
    n_pos, n_neg = pos.sum(0), neg.sum(0)
    # clamp_min keeps an empty group's mean finite (0/1 instead of 0/0) so the masked-out branch
    # cannot leak NaN into the gradient; the distance between a group and nothing is undefined,
    # so such a batch contributes no signal for that attribute
    gap = (pos * f).sum(0) / n_pos.clamp_min(1.0) - (neg * f).sum(0) / n_neg.clamp_min(1.0)
    both = ((n_pos > 0) & (n_neg > 0)).to(f.dtype)
    return gap * both


def wgan_losses(h, weight, bias, labels, n_primary: int, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Wasserstein-GAN objective with the auxiliary rows as linear critics: ``(per_head, total)``.

    ``per_head`` [K], detached: the primary heads' mean BCE and, for each auxiliary head, the
    critic's signed distance estimate ``gap_b`` (not a BCE: the critics have no sigmoid).
    ``total``: scalar; its backward gives h and the primary rows the gradient of
    ``mean_a BCE + lam * mean_b gap_b`` (critics frozen), and the critic rows that of
    ``- mean_b gap_b`` on ``h.detach()``. Pair with ``clip_critic_`` after each optimizer step.
    """
    hf, wf, bf, y = _split(h, weight, bias, labels, n_primary)
    a = n_primary
    primary = _primary_bce(hf, wf, bf, y, a)
    y_aux = y[:, a:]
    # the signed gap, not |gap|, as in WGAN: if the features overshoot below 0 the critic, which
    # maximises it, turns round; |.| would have no useful gradient at the equilibrium gap = 0
    gap_feat = _gaps(hf @ wf[a:].detach().t() + bf[a:].detach(), y_aux)
    gap_critic = _gaps(hf.detach() @ wf[a:].t() + bf[a:], y_aux)
    total = primary.mean() + lam * gap_feat.mean() - gap_critic.mean()
    per_head = torch.cat([primary, gap_critic]).detach()
    return per_head, total


@torch.no_grad()
def clip_critic_(weight: torch.Tensor, bias: torch.Tensor, n_primary: int, c: float) -> None:
    """WGAN weight clipping (Arjovsky et al. 2017), in place: auxiliary rows of weight/bias into [-c, c].

    This is the Lipschitz constraint we chose for the critics: a linear critic ``h . W_b + bias_b``
    is ||W_b||_2-Lipschitz in h, and clipping every entry to [-c, c] bounds that by ``c sqrt(D)``,
    so ``gap_b / (c sqrt(D))`` is a lower bound of the Wasserstein-1 distance. The bias does not
    enter the Lipschitz constant (and, cancelling in gap_b, gets no gradient); it is clipped too so
    all critic parameters live in one box. The primary rows are left untouched (bitwise).
    """
    if not c > 0:
        raise ValueError(f"clip value must be positive, got {c}")
    weight[n_primary:].clamp_(-c, c)
    bias[n_primary:].clamp_(-c, c)

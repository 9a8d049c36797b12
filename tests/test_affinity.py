"""Lookahead inter-task affinity: the arithmetic against a hand computation, and no side effects."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aal_k8s.affinity import (
    AdamLookahead,
    LookaheadAffinity,
    default_every,
    most_negative_source,
)
from aal_k8s.heads import head_coefficients, head_losses
from aal_k8s.model import AttributeNet


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tiny(nn.Module):
    """AttributeNet's interface around one bias-free linear backbone: h = x @ A^T, z = h @ W^T + b."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.backbone = nn.Linear(3, 2, bias=False).double()
        self.drop = nn.Dropout(dropout)
        with torch.no_grad():
            self.backbone.weight.copy_(torch.tensor([[0.5, -0.3, 0.2], [0.1, 0.4, -0.6]]))
        self.head_weight = nn.Parameter(torch.tensor([[1.0, -0.5], [-0.8, 0.3], [0.2, 0.9]], dtype=torch.float64))
        self.head_bias = nn.Parameter(torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64))

    def features(self, x):
        return self.drop(self.backbone(x))


X = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.5, 2.0], [-2.0, 0.3, 0.7], [1.2, 1.1, -0.4]], dtype=torch.float64)
Y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def _hand_losses(a, w, b):
    """Per-task mean BCE of the tiny model at backbone weight ``a``, written out."""
    z = X @ a.t() @ w.t() + b
    p = torch.sigmoid(z)
    return -(Y * torch.log(p) + (1 - Y) * torch.log(1 - p)).mean(0)


def _hand_grad(a, w, b, i):
    """d L_i / d A: (sigmoid(z_i) - y_i) / B times head row i, outer the inputs."""
    z = X @ a.t() @ w.t() + b
    dz = (torch.sigmoid(z[:, i]) - Y[:, i]) / X.shape[0]  # [B]
    return (dz[:, None] * w[i][None, :]).t() @ X  # [2, 3]


def _hand_adam_update(g, theta, m0, v0, t, lr, beta1, beta2, eps, wd):
    """Adam's step for one more step t+1 from moments (m0, v0), element by element."""
    g = g + wd * theta
    m = beta1 * m0 + (1 - beta1) * g
    v = beta2 * v0 + (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** (t + 1))
    v_hat = v / (1 - beta2 ** (t + 1))
    return lr * m_hat / (torch.sqrt(v_hat) + eps)


def _hand_z(model, updates):
    a, w, b = model.backbone.weight.detach(), model.head_weight.detach(), model.head_bias.detach()
    before = _hand_losses(a, w, b)
    return torch.stack([1 - _hand_losses(a - u, w, b) / before for u in updates])


def _state(opt):
    return [(p, {k: v.clone() for k, v in s.items()}) for p, s in opt.state.items()]


def test_a_fresh_adam_lookahead_is_lr_times_the_gradient_sign_and_z_matches_the_hand_computation():
    model = Tiny()
    lr = 0.05
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    a, w, b = model.backbone.weight.detach(), model.head_weight.detach(), model.head_bias.detach()
    updates = []
    for i in range(3):
        g = _hand_grad(a, w, b, i)
        u = _hand_adam_update(g, a, torch.zeros_like(a), torch.zeros_like(a), 0, lr, 0.9, 0.999, 1e-8, 0.0)
        torch.testing.assert_close(u, lr * torch.sign(g), rtol=1e-6, atol=0)  # m_hat = g, v_hat = g^2
        # the module's update on the same gradient
        la = AdamLookahead(opt, [model.backbone.weight])
        theta = a.clone()
        la.apply_([g])
        torch.testing.assert_close(theta - model.backbone.weight.detach(), u, rtol=1e-12, atol=1e-15)
        with torch.no_grad():
            model.backbone.weight.copy_(theta)
        updates.append(u)
    aff = LookaheadAffinity(model, opt, n_tasks=3, every=1)
    z = aff.measure(X, Y)
    assert z.dtype == torch.float64 and z.device.type == "cpu" and z.shape == (3, 3)
    torch.testing.assert_close(z, _hand_z(model, updates), rtol=1e-10, atol=1e-12)
    assert aff.matrix() == z.tolist() and aff.measurements == 1
    assert not opt.state  # the first-step state was never created


def test_after_a_real_step_the_lookahead_uses_adams_moments_bias_correction_and_l2_weight_decay():
    model = Tiny()
    lr, wd, betas, eps = 0.02, 0.1, (0.8, 0.95), 1e-6
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=wd)
    z = model.features(X) @ model.head_weight.t() + model.head_bias
    F.binary_cross_entropy_with_logits(z, Y, reduction="none").mean(0).sum().backward()
    opt.step()
    opt.step()  # t = 2 in the state
    state = opt.state[model.backbone.weight]
    assert float(state["step"]) == 2.0
    a, w, b = model.backbone.weight.detach(), model.head_weight.detach(), model.head_bias.detach()
    updates = [
        _hand_adam_update(_hand_grad(a, w, b, i), a, state["exp_avg"], state["exp_avg_sq"], 2, lr, *betas, eps, wd)
        for i in range(3)
    ]
    aff = LookaheadAffinity(model, opt, n_tasks=3, every=1)
    torch.testing.assert_close(aff.measure(X, Y), _hand_z(model, updates), rtol=1e-10, atol=1e-12)


def test_the_lookahead_is_bitwise_the_parameter_a_real_adam_step_on_one_task_would_give():
    torch.manual_seed(0)
    model = AttributeNet("small_cnn", "none", ["a", "b"]).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.randn(8, 3, 16, 16).to(memory_format=torch.channels_last)
    y = (torch.rand(8, 2) < 0.5).float()
    F.binary_cross_entropy_with_logits(model(x), y).backward()
    opt.step()
    shared = list(model.backbone.parameters())
    loss = F.binary_cross_entropy_with_logits(model(x)[:, 1], y[:, 1])
    grads = torch.autograd.grad(loss, shared)

    twin = copy.deepcopy(model)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-3, weight_decay=1e-4)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    twin_opt.zero_grad(set_to_none=True)
    for p, g in zip(twin.backbone.parameters(), grads):
        p.grad = g.clone()
    twin_opt.step()

    before = _state(opt)
    AdamLookahead(opt, shared).apply_(grads)
    for p, q in zip(shared, twin.backbone.parameters()):
        assert torch.equal(p, q)
    for (p, s), (p2, s2) in zip(before, _state(opt)):
        assert p is p2 and all(torch.equal(s[k], s2[k]) for k in s)


def _cnn(seed=0, heads=("a", "b", "c")):
    torch.manual_seed(seed)
    return AttributeNet("small_cnn", "none", list(heads)).to(memory_format=torch.channels_last)


def _batch(seed, b=8, k=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 16, 16, generator=g).to(memory_format=torch.channels_last)
    return x, (torch.rand(b, k, generator=g) < 0.5).float()


def _train_step(model, opt, x, y, loss_w, feat_c):
    loss, _ = head_losses(model.features(x), model.head_weight, model.head_bias, y, loss_w, feat_c, impl="reference")
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()
    opt.step()


def test_a_measurement_restores_parameters_buffers_grads_optimizer_state_mode_and_rng_bitwise():
    model = _cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_w, feat_c = head_coefficients(3, 0, 0.0)
    model.train()
    for s in range(2):
        _train_step(model, opt, *_batch(s), loss_w, feat_c)
    model.backbone.body[0].weight.grad = None  # a mix of None and populated grads
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    versions = {n: p._version for n, p in model.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    state = _state(opt)
    rng = torch.get_rng_state()

    aff = LookaheadAffinity(model, opt, n_tasks=3, every=2)
    z = aff.measure(*_batch(9))
    assert z.shape == (3, 3) and torch.isfinite(z).all() and (z != 0).any()
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(p.requires_grad for p in model.parameters())
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]) and p._version == versions[n], n
        assert (p.grad is None) if grads[n] is None else torch.equal(p.grad, grads[n]), n
        assert p.is_contiguous(memory_format=torch.channels_last) or p.dim() != 4
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert any(b.dtype.is_floating_point and b.abs().sum() > 0 for b in buffers.values())  # BatchNorm stats
    for (p, s), (p2, s2) in zip(state, _state(opt)):
        assert p is p2 and all(torch.equal(s[k], s2[k]) for k in s)
    assert aff.seconds > 0


def test_a_measurement_between_a_training_forward_and_its_backward_leaves_the_backward_unchanged():
    loss_w, feat_c = head_coefficients(3, 0, 0.0)
    x, y = _batch(1)
    grads = []
    for measure in (False, True):
        model = _cnn()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        h = model.features(x)
        loss, _ = head_losses(h, model.head_weight, model.head_bias, y, loss_w, feat_c, impl="reference")
        if measure:
            LookaheadAffinity(model, opt, 3, every=1).measure(x, y)
        loss.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_training_with_measurements_every_two_steps_ends_bitwise_where_training_without_them_does():
    loss_w, feat_c = head_coefficients(3, 0, 0.0)
    finals, matrices = [], []
    for measure in (False, True, True):
        model = _cnn(seed=3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        aff = LookaheadAffinity(model, opt, n_tasks=3, every=2)
        model.train()
        for step in range(6):
            x, y = _batch(100 + step)
            if measure and aff.due(step):
                aff.measure(x, y)
            _train_step(model, opt, x, y, loss_w, feat_c)
            torch.randn(1)  # the run's own RNG use continues where it would have
        finals.append([t.clone() for t in (*model.parameters(), *model.buffers(), torch.randn(4))])
        if measure:
            assert aff.measurements == 3
            matrices.append(aff.matrix())
    for a, b in zip(finals[0], finals[1]):
        assert torch.equal(a, b)
    assert matrices[0] == matrices[1]  # measurements are deterministic too


def test_with_dropout_every_forward_of_a_measurement_sees_the_same_mask_and_the_rng_is_left_alone():
    torch.manual_seed(0)
    model = Tiny(dropout=0.5).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)  # a zero step: after == before only if the masks agree
    rng = torch.get_rng_state()
    z = LookaheadAffinity(model, opt, 3, every=1).measure(X, Y)
    assert torch.equal(z, torch.zeros(3, 3))
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_matrix_averages_the_last_window_measurements_or_all_of_them():
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    last2 = LookaheadAffinity(model, opt, 3, every=1, window=2)
    every = LookaheadAffinity(model, opt, 3, every=1)
    with pytest.raises(RuntimeError):
        last2.matrix()
    zs = []
    for s in range(3):
        x = X + 0.3 * s
        zs.append(last2.measure(x, Y))
        assert torch.equal(every.measure(x, Y), zs[-1])
    assert not torch.equal(zs[0], zs[2])
    exact = {"rtol": 1e-15, "atol": 1e-15}
    torch.testing.assert_close(torch.tensor(last2.matrix(), dtype=torch.float64), (zs[1] + zs[2]) / 2, **exact)
    torch.testing.assert_close(torch.tensor(every.matrix(), dtype=torch.float64), sum(zs) / 3, **exact)
    assert last2.measurements == every.measurements == 3


def test_due_measures_every_k_steps_from_step_zero_and_every_zero_means_twice_the_task_count():
    aff = LookaheadAffinity(Tiny(), torch.optim.Adam(Tiny().parameters()), 3, every=4)
    assert [s for s in range(13) if aff.due(s)] == [0, 4, 8, 12]
    assert default_every(3) == 6
    model = Tiny()
    assert LookaheadAffinity(model, torch.optim.Adam(model.parameters()), 3, every=0).every == 6


def test_a_fresh_tracker_loading_the_state_continues_bitwise():
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for window in (0, 2):
        a = LookaheadAffinity(model, opt, 3, every=5, window=window)
        for s in range(3):
            a.measure(X * (1 + 0.2 * s), Y)
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        buf.seek(0)
        b = LookaheadAffinity(model, opt, 3, every=5, window=window)
        b.load_state_dict(torch.load(buf, weights_only=True))
        assert b.matrix() == a.matrix() and b.measurements == 3 and b.seconds == a.seconds
        a.measure(X - 1, Y)
        b.measure(X - 1, Y)
        assert b.matrix() == a.matrix()
        with pytest.raises(ValueError):
            LookaheadAffinity(model, opt, 3, every=5, window=window + 1).load_state_dict(a.state_dict())


def test_most_negative_source_picks_the_most_harmful_other_task_or_none():
    tasks = ["a", "b", "c", "d"]
    z = [
        [0.5, -0.2, 0.1, -0.3],
        [-0.1, 0.4, 0.2, -0.3],
        [-0.4, -0.2, 0.3, 0.0],
        [0.2, -0.05, 0.1, -9.0],
    ]
    assert most_negative_source(z, tasks, "a") == "c"  # column a: -0.1 (b), -0.4 (c)
    assert most_negative_source(z, tasks, "b") == "a"  # tie -0.2 between a and c: the lower index
    assert most_negative_source(z, tasks, "c") is None  # nothing below 0 (the diagonal is ignored)
    assert most_negative_source(z, tasks, "d") == "a"  # tie -0.3 between a and b; d's own -9 is ignored
    with pytest.raises(ValueError):
        most_negative_source(z, tasks, "e")


def test_amsgrad_and_optimizers_other_than_adam_are_refused():
    model = Tiny()
    with pytest.raises(ValueError, match="amsgrad"):
        LookaheadAffinity(model, torch.optim.Adam(model.parameters(), amsgrad=True), 3, every=1)
    with pytest.raises(TypeError):
        LookaheadAffinity(model, torch.optim.SGD(model.parameters(), lr=0.1), 3, every=1)
    with pytest.raises(ValueError):
        LookaheadAffinity(model, torch.optim.Adam(model.parameters()), 2, every=1)


def test_a_held_out_batch_is_where_losses_are_measured_while_the_step_follows_the_training_batch():
    model = _cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = _batch(1)
    xv, yv = _batch(2)
    same = LookaheadAffinity(model, opt, n_tasks=3, every=1).measure(x, y, held_out=(x, y))
    plain = LookaheadAffinity(model, opt, n_tasks=3, every=1).measure(x, y)
    assert torch.equal(same, plain)
    held = LookaheadAffinity(model, opt, n_tasks=3, every=1).measure(x, y, held_out=(xv, yv))
    assert not torch.equal(held, plain)
    # by hand for one entry: step for task 0 on (x, y), task 2's loss on (xv, yv)
    probe = copy.deepcopy(model)
    probe_opt = torch.optim.Adam([p for n, p in probe.named_parameters() if not n.startswith("head_")], lr=1e-2)

    def losses(m, xb, yb):
        z = m.features(xb) @ m.head_weight.t() + m.head_bias
        return F.binary_cross_entropy_with_logits(z, yb, reduction="none").mean(0)

    before = losses(probe, xv, yv).detach()
    probe_opt.zero_grad()
    losses(probe, x, y)[0].backward()
    probe_opt.step()
    after = losses(probe, xv, yv).detach()
    assert abs(held[0, 2].item() - (1 - after[2] / before[2]).item()) < 1e-5
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n

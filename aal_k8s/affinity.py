"""Lookahead inter-task affinity (Fifty et al. 2021, "Efficiently Identifying Task Groupings in
Multi-Task Learning", NeurIPS), measured during a multi-task run over K attribute heads.

A measurement on a batch ``(x, y)`` at shared parameters ``theta_s``:

    L_j(before)   = mean BCE-with-logits of head j on the batch              (one forward, train mode)
    g_i           = d L_i(before) / d theta_s                                (K backward calls, one graph)
    theta_s|i     = theta_s - update_i                                       (the step the run's Adam
                    optimizer would take on L_i alone, from its current state, which is left untouched)
    L_j(after_i)  = L_j on the same batch at theta_s|i                       (K forwards, no grad)
    Z(i -> j)     = 1 - L_j(after_i) / L_j(before)

Conventions: row i is the updated (source) task, column j the measured (target) task. Z(i -> j) > 0:
a step for i lowers j's loss (i helps j); Z(i -> j) < 0: it raises it (i hurts j). Only the shared
parameters (every parameter but ``head_weight`` and ``head_bias``) move in the lookahead; head j
keeps its weights, as in the paper. ``g_i`` is the gradient of the plain, unweighted L_i (the
training objective of a multi run is the mean over heads; Adam is nearly invariant to that scale,
but its moments mix ``g_i`` with the run's own gradients). Where ``L_j(before)`` is exactly 0
(an fp underflow) Z(i -> j) is reported as 0.

Cost: one forward, K backward passes through the backbone and K forwards, i.e. about K training
steps. Measuring every 2K steps (``default_every``) therefore adds about half a run.

Side effects: none. Parameters and buffers (BatchNorm running statistics move in train-mode
forwards) are restored bitwise, ``.grad`` fields and the optimizer state are never written, the
global RNG state (CPU and the model's CUDA devices) is put back, and parameters are written through
``.data`` so that their autograd version counters do not move: a measurement may sit between a
training forward and its backward. Every forward of one measurement starts from the same RNG state,
so a model with dropout sees the same masks before and after each lookahead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aal_k8s.modes import default_every  # noqa: F401 - the affinity stage's default, with its options
from aal_k8s.partners import most_negative_partner  # the rule reduce applies to every partner source

STATE_FORMAT = 1


def most_negative_source(z: list[list[float]], tasks: list[str], target: str) -> str | None:
    """The task ``i != target`` with the most negative ``Z(i -> target)`` (the one whose lookahead
    step raises the target's loss most), or None when no ``Z(i -> target)`` is below 0. Ties go to
    the lower index. ``z[i][j]`` is ``Z(i -> j)`` as returned by ``LookaheadAffinity.matrix``."""
    if len(z) != len(tasks) or any(len(row) != len(tasks) for row in z):
        raise ValueError(f"affinity matrix is not {len(tasks)}x{len(tasks)} for tasks {tasks}")
    if target not in tasks:
        raise ValueError(f"target {target!r} is not one of the tasks {tasks}")
    j = tasks.index(target)
    column = {source: z[i][j] for i, source in enumerate(tasks)}
    return most_negative_partner(target, 0.0, column, tasks)


class AdamLookahead:
    """The step ``optimizer.step()`` would take on ``params`` for given gradients, computed from
    the optimizer's current state without changing it (torch.optim.Adam semantics).

    Per parameter, with the group's ``lr``, ``betas``, ``eps``, ``weight_decay`` and the state's
    step count ``t`` (0 when the parameter has no state yet, with zero moments)::

        g  = grad (+ weight_decay * theta, L2 style)     (negated first when maximize)
        m  = beta1 * exp_avg + (1 - beta1) * g            v = beta2 * exp_avg_sq + (1 - beta2) * g^2
        theta <- theta - lr / (1 - beta1^(t+1)) * m / (sqrt(v) / sqrt(1 - beta2^(t+1)) + eps)

    (with ``decoupled_weight_decay`` (AdamW) theta is first multiplied by ``1 - lr * weight_decay``
    instead). The operations mirror torch's single-tensor implementation (Adam's default on a CPU)
    one for one, so there the result is bitwise the parameter ``optimizer.step()`` would produce;
    the foreach/fused CUDA kernels round differently in the last bits. Parameters whose gradient
    is None are left alone, as ``optimizer.step()`` does. amsgrad is not supported (ValueError).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[Tensor]):
        _check_optimizer(optimizer)
        owner = {id(p): gi for gi, group in enumerate(optimizer.param_groups) for p in group["params"]}
        self.params = list(params)
        self._plan = []  # per parameter: (index, hyperparameters of its group, exp_avg, exp_avg_sq)
        for p in self.params:
            if id(p) not in owner:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} is not in the optimizer")
            group = optimizer.param_groups[owner[id(p)]]
            state = optimizer.state.get(p, {})
            if "exp_avg" in state:
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                t = float(state["step"])  # a tensor (on the device for fused/capturable Adam)
            else:  # what Adam's _init_group would create for the first step
                exp_avg = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg_sq = torch.zeros_like(p, memory_format=torch.preserve_format)
                t = 0.0
            lr, wd = float(group["lr"]), float(group["weight_decay"])
            beta1, beta2 = (float(b) for b in group["betas"])
            step = t + 1.0
            # the same Python float expressions as torch.optim.adam._single_tensor_adam
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            hp = {
                "beta1": beta1,
                "beta2": beta2,
                "eps": float(group["eps"]),
                "wd": wd,
                "decoupled": bool(group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))),
                "maximize": bool(group.get("maximize", False)),
                "lr": lr,
                "step_size": lr / bias_correction1,
                "bc2_sqrt": bias_correction2**0.5,
            }
            self._plan.append((hp, exp_avg, exp_avg_sq))

    @torch.no_grad()
    def apply_(self, grads: Sequence[Tensor | None]) -> None:
        """Subtract the would-be Adam step for ``grads`` (aligned with ``params``) from the
        parameters, in place, through ``.data`` (autograd version counters do not move)."""
        if len(grads) != len(self.params):
            raise ValueError(f"{len(grads)} gradients for {len(self.params)} parameters")
        for p, g, (hp, exp_avg, exp_avg_sq) in zip(self.params, grads, self._plan):
            if g is None:
                continue
            theta = p.data
            if hp["maximize"]:
                g = -g
            if hp["wd"] != 0:
                if hp["decoupled"]:
                    theta.mul_(1 - hp["lr"] * hp["wd"])
                else:
                    g = g.add(theta, alpha=hp["wd"])
            m = torch.lerp(exp_avg, g, 1 - hp["beta1"])  # exp_avg.lerp_(grad, 1 - beta1), out of place
            v = exp_avg_sq.mul(hp["beta2"]).addcmul_(g, g, value=1 - hp["beta2"])
            denom = (v.sqrt() / hp["bc2_sqrt"]).add_(hp["eps"])
            theta.addcdiv_(m, denom, value=-hp["step_size"])


def _check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise TypeError(f"lookahead affinity needs torch.optim.Adam, got {type(optimizer).__name__}")
    if any(group.get("amsgrad", False) for group in optimizer.param_groups):
        raise ValueError("lookahead affinity does not support Adam(amsgrad=True)")


class _PinnedRng:
    """The global RNG states (CPU and the given CUDA devices) at construction, to start every
    forward of a measurement from and to restore afterwards."""

    def __init__(self, cuda_devices: Sequence[torch.device]):
        self.cpu = torch.get_rng_state()
        self.cuda = [(d, torch.cuda.get_rng_state(d)) for d in cuda_devices]

    def reset(self) -> None:
        torch.set_rng_state(self.cpu)
        for d, state in self.cuda:
            torch.cuda.set_rng_state(state, d)


@torch.no_grad()
def _copy_back(tensors: Sequence[Tensor], saved: Sequence[Tensor]) -> None:
    # through .data: a bitwise copy that leaves the autograd version counter alone, so a retained
    # graph (ours, or the caller's training graph) that saved these tensors stays usable
    for t, s in zip(tensors, saved):
        t.data.copy_(s)


class LookaheadAffinity:
    """Lookahead inter-task affinity of a multi-task run, measured every ``every`` steps and
    averaged over the last ``window`` measurements (0: all of them). See the module docstring.

    ``model`` has ``features(x)``, ``head_weight [K, D]`` and ``head_bias [K]`` (``AttributeNet``);
    ``optimizer`` is the run's ``torch.optim.Adam``. ``every=0`` means ``default_every(n_tasks)``.
    Call ``measure`` on the training batch of a step with ``due(step)`` before ``optimizer.step()``
    (anywhere before it: ahead of the training forward or between it and its backward).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, n_tasks: int, every: int, window: int = 0):
        _check_optimizer(optimizer)
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        if every < 0 or window < 0:
            raise ValueError(f"every and window must be >= 0, got every={every} window={window}")
        rows = model.head_weight.shape[0]
        if rows != n_tasks:
            raise ValueError(f"the model has {rows} heads, not n_tasks={n_tasks}")
        self.model, self.optimizer = model, optimizer
        self.n_tasks, self.window = n_tasks, window
        self.every = every or default_every(n_tasks)
        self.seconds = 0.0  # wall time spent inside measure (GPU work included: it ends on a copy to the CPU)
        self._count = 0
        self._sum = torch.zeros(n_tasks, n_tasks, dtype=torch.float64)  # of all measurements
        self._recent: deque[Tensor] = deque(maxlen=window or None)  # the last `window` ones (window > 0)

    @property
    def measurements(self) -> int:
        return self._count

    def due(self, step: int) -> bool:
        """Whether the 0-based global training step ``step`` is a measurement step."""
        return step % self.every == 0

    def _shared_params(self) -> list[Tensor]:
        """The parameters a lookahead moves: all but the heads, that train and that Adam updates."""
        heads = {id(self.model.head_weight), id(self.model.head_bias)}
        in_opt = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        shared = [p for p in self.model.parameters() if id(p) not in heads and p.requires_grad and id(p) in in_opt]
        if not shared:
            raise ValueError("no shared parameter both requires grad and is in the optimizer")
        return shared

    def _heads_forward(self, x: Tensor) -> Tensor:
        """Logits as ``AttributeNet.forward``, but with the heads in fp32 (fp64 for an fp64 model)."""
        h = self.model.features(x)
        acc = torch.promote_types(h.dtype, torch.float32)
        return h.to(acc) @ self.model.head_weight.to(acc).t() + self.model.head_bias.to(acc)

    def _task_losses(self, forward: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
        """``[K]`` mean BCE-with-logits per head, accumulated in fp32 (fp64 for fp64 logits)."""
        logits = forward(x)
        if logits.dim() != 2 or logits.shape[1] != self.n_tasks or tuple(y.shape) != tuple(logits.shape):
            raise ValueError(
                f"logits {tuple(logits.shape)} and labels {tuple(y.shape)} must both be [B, {self.n_tasks}]"
            )
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.binary_cross_entropy_with_logits(z, y.to(z.dtype), reduction="none").mean(0)

    def measure(
        self,
        x: Tensor,
        y: Tensor,
        forward: Callable[[Tensor], Tensor] | None = None,
        held_out: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """One measurement on the batch ``(x, y)`` (labels ``[B, K]`` in {0, 1}) in the model's
        current mode; returns its ``[K, K]`` matrix ``Z[i, j] = Z(i -> j)`` (float64, CPU) and
        records it. ``forward(x)`` must give the logits ``[B, K]`` from the model's parameters
        (default: ``model.features`` and the heads in fp32).

        ``held_out``: a batch ``(x', y')`` the losses before and after are measured on, instead of
        ``(x, y)``; the lookahead steps still follow the gradients on ``(x, y)``. Fifty et al.
        measure on the training batch; a held-out batch asks whether a step for i helps or hurts j
        where it matters, on data j's training labels do not describe."""
        start = time.perf_counter()
        model, k = self.model, self.n_tasks
        forward = forward if forward is not None else self._heads_forward
        shared = self._shared_params()
        adam = AdamLookahead(self.optimizer, shared)  # reads the state once for the K lookaheads
        buffers = list(model.buffers())
        saved_params = [p.detach().clone() for p in shared]  # clone keeps strides (channels_last)
        saved_buffers = [b.detach().clone() for b in buffers]
        cuda = {t.device for t in (*shared, x) if t.device.type == "cuda"}
        rng = _PinnedRng(sorted(cuda, key=str))
        try:
            with torch.enable_grad():
                before = self._task_losses(forward, x, y)
            _copy_back(buffers, saved_buffers)
            mx, my = held_out if held_out is not None else (x, y)
            base_losses = before
            if held_out is not None:
                rng.reset()
                with torch.no_grad():
                    base_losses = self._task_losses(forward, mx, my)
                _copy_back(buffers, saved_buffers)
            after = torch.empty(k, k, dtype=before.dtype, device=before.device)
            for i in range(k):
                # one graph for all K gradients; parameters are moved and restored through .data,
                # so the graph's saved tensors hold the original values again at each backward
                grads = torch.autograd.grad(before[i], shared, retain_graph=i + 1 < k, allow_unused=True)
                adam.apply_(grads)
                del grads
                rng.reset()
                with torch.no_grad():
                    after[i] = self._task_losses(forward, mx, my)
                _copy_back(shared, saved_params)
                _copy_back(buffers, saved_buffers)
            base = base_losses.detach().to("cpu", torch.float64)
            moved = after.to("cpu", torch.float64)
            z = torch.where(base > 0, 1 - moved / base, torch.zeros_like(moved))
        finally:
            _copy_back(shared, saved_params)
            _copy_back(buffers, saved_buffers)
            rng.reset()
            self.seconds += time.perf_counter() - start
        self._record(z)
        return z.clone()

    def _record(self, z: Tensor) -> None:
        self._count += 1
        self._sum += z
        if self.window:
            self._recent.append(z)

    def matrix(self) -> list[list[float]]:
        """Mean Z over the last ``window`` measurements (all when 0): ``[i][j] = Z(i -> j)``, row i
        the updated task, column j the measured one. RuntimeError before the first measurement."""
        if self._count == 0:
            raise RuntimeError("no affinity measurement yet")
        if self.window:
            return (torch.stack(list(self._recent)).sum(0) / len(self._recent)).tolist()
        return (self._sum / self._count).tolist()

    def state_dict(self) -> dict:
        """Tensors and primitives only (``torch.load(weights_only=True)`` reads it back)."""
        k = self.n_tasks
        recent = torch.stack(list(self._recent)) if self._recent else torch.zeros(0, k, k, dtype=torch.float64)
        return {
            "format": STATE_FORMAT,
            "n_tasks": k,
            "every": self.every,
            "window": self.window,
            "measurements": self._count,
            "sum": self._sum.clone(),
            "recent": recent,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()`` of a run with the same n_tasks, every and window."""
        mine = {"format": STATE_FORMAT, "n_tasks": self.n_tasks, "every": self.every, "window": self.window}
        theirs = {key: state.get(key) for key in mine}
        if theirs != mine:
            raise ValueError(f"affinity state is for {theirs}, not {mine}")
        k = self.n_tasks
        total, recent = state["sum"], state["recent"]
        if tuple(total.shape) != (k, k) or recent.dim() != 3 or tuple(recent.shape[1:]) != (k, k):
            raise ValueError(f"affinity state tensors have shapes {tuple(total.shape)} and {tuple(recent.shape)}")
        self._count = int(state["measurements"])
        self._sum = total.to("cpu", torch.float64).clone()
        self._recent = deque((r.to("cpu", torch.float64).clone() for r in recent), maxlen=self.window or None)
        self.seconds = float(state["seconds"])

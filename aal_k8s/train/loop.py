"""Train one RunSpec: Adam, step lr decay, per-epoch validation, best epoch kept, test reported.

One loop for every mode (paper section 3, appendix A.3, the ablations of section 4.2.1): what a
mode changes (its objective, frozen parts, per-step hooks, extra state) is the ``Mode`` object of
``aal_k8s.train.modes`` the loop calls.

What a run keeps between epochs (history, the best epoch, timings, the global step) and how it
becomes a checkpoint's entries and the ``RunResult`` is ``aal_k8s.train.progress``, shared with
the members of a pack (``aal_k8s.packs``).

Checkpoints (``aal_k8s.train.checkpoint``): ``on_checkpoint`` receives the whole training state
after every epoch; passing such a state back as ``resume_state`` continues after that epoch, and on
CPU the resumed run ends with bitwise the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from aal_k8s.config import config_from_dict
from aal_k8s.data import LoadedDataset
from aal_k8s.data.pipeline import pipeline_for_run
from aal_k8s.errors import AALError
from aal_k8s.model import AttributeNet
from aal_k8s.modes import options_of
from aal_k8s.runspec import RunSpec
from aal_k8s.train import checkpoint
from aal_k8s.train.device import pick_device
from aal_k8s.train.evaluate import evaluate
from aal_k8s.train.modes import MODES, Mode
from aal_k8s.train.progress import Progress, RunResult


def lr_at(epoch: int, base_lr: float, decay_epoch: int, factor: float) -> float:
    """Learning rate of 1-based ``epoch``: divided by ``factor`` from ``decay_epoch`` on."""
    return base_lr / factor if epoch >= decay_epoch else base_lr


EpochHook = Callable[[int, dict], None]
CheckpointHook = Callable[[dict], None]


class DivergedError(AALError):
    """The loss or the weights became NaN/inf: the run stops and nothing of it is committed.
    Exit 1 (a retry resumes from the last finite checkpoint; a setting that always diverges
    fails its retries too, each with this one line)."""

    exit_code = 1


def _check_finite(spec: RunSpec, epoch: int, model, loss_sum: torch.Tensor, heads: list[str]) -> None:
    """``DivergedError`` naming the first non-finite head loss or tensor. Once per epoch, not
    per step: one device sync, and a diverged step cannot become finite again."""
    bad = [name for name, v in zip(heads, loss_sum.tolist()) if not math.isfinite(v)]
    if bad:
        raise DivergedError(f"run {spec.run_id}: training diverged in epoch {epoch}: the loss of {', '.join(bad)} "
                            f"is not finite (lower train.lr?); nothing was committed")  # fmt: skip
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DivergedError(f"run {spec.run_id}: training diverged in epoch {epoch}: {name} holds NaN or inf "
                                f"(lower train.lr?); nothing was committed")  # fmt: skip


def mode_of(spec: RunSpec, device: torch.device, heads_impl: str) -> Mode:
    """The ``Mode`` a run trains in, its typed options checked (one line naming the run if not)."""
    options = options_of(spec.mode, spec.options, spec.run_id)
    return MODES[spec.mode](spec, options, device, heads_impl)


def train_run(
    spec: RunSpec,
    data: LoadedDataset,
    on_epoch_end: EpochHook | None = None,
    resume_state: dict | None = None,
    on_checkpoint: CheckpointHook | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> RunResult:
    """Train ``spec`` on ``data`` and return the best epoch's metrics and weights.

    ``resume_state``: a state given to ``on_checkpoint`` earlier; training continues after its
    epoch. ``on_checkpoint(state)`` is called after every epoch and must serialise the state
    before returning (its tensors are the live ones). ``init_state``: the best weights of run
    ``spec.init_from`` (their ``backbone.*`` tensors initialise the backbone)."""
    cfg = config_from_dict(spec.config)
    t, m = cfg.train, cfg.model
    device = pick_device(t.device)
    mode = mode_of(spec, device, t.heads_impl)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)

    cols = [data.attributes.index(a) for a in spec.heads]
    # a run that starts from another's CNN (the shared ablation): no point loading ImageNet weights first
    model = AttributeNet(m.backbone, "none" if spec.init_from else m.pretrained, spec.heads, hidden_layers=mode.hidden_layers())
    if spec.init_from:
        if init_state is None:
            raise AALError(f"run {spec.run_id}: starts from the weights of run {spec.init_from}, which were not given")
        model.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in init_state.items() if k.startswith("backbone.")})
    mode.prepare(model)
    # channels_last: 1.6x faster convolutions on CPU (oneDNN) and the layout tensor cores want
    model = model.to(device, memory_format=torch.channels_last)
    # fused Adam on CUDA: one kernel for all parameters (CPU keeps the default, bitwise as before)
    fused = True if device.type == "cuda" else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    # input pipeline (aal_k8s.data.pipeline): splits resident on the device when decoded, batches
    # augmented there; bf16 autocast on CUDA by default (train.precision)
    pipe = pipeline_for_run(data, cols, cfg, device, spec.seed)
    bf16 = pipe.bf16
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    forward = torch.compile(model.forward) if t.compile else model
    features = mode.features(model, t.compile)
    mode.start(model, opt, pipe, t.batch_size)
    steps_per_epoch = max(1, -(-pipe.size("train") // t.batch_size))

    p = Progress()
    first = 1
    if resume_state is not None:
        first = checkpoint.restore(resume_state, spec.run_id, model, opt, gen) + 1
        p = Progress.resumed(resume_state, device, default_step=(first - 1) * steps_per_epoch)
        mode.resume(resume_state, pipe, t.batch_size)
    start = time.perf_counter() - p.seconds_before
    for epoch in range(first, t.epochs + 1):
        lr = lr_at(epoch, t.lr, t.lr_decay_epoch, t.lr_decay_factor)
        for group in opt.param_groups:
            group["lr"] = lr
        mode.train_mode(model)
        t0 = time.perf_counter()
        loss_sum = torch.zeros(len(cols), device=device)
        steps = 0
        for x, y in pipe.train_batches(t.batch_size, gen, epoch):
            mode.before_step(p.step, x, y)
            lam = mode.lam_at(p.step / (t.epochs * steps_per_epoch))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                h = features(x)
            # the heads take bf16 or fp32 features and accumulate in fp32 (outside autocast)
            loss, total = mode.loss(h, model, y, lam)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            mode.after_step(model)
            loss_sum += loss.detach()
            steps += 1
            p.step += 1
        _check_finite(spec, epoch, model, loss_sum, spec.heads)  # before anything of this epoch is kept
        t1 = time.perf_counter()
        val_hits: list = []
        val_acc = evaluate(model, pipe.eval_batches("val", t.eval_batch_size), len(cols), device, bf16, forward, val_hits)
        t2 = time.perf_counter()
        p.timings["train"] += t1 - t0
        p.timings["eval"] += t2 - t1
        p.timings.update(mode.timings())
        entry = p.record(spec, model, epoch, lr, loss_sum / max(1, steps), val_acc, torch.cat(val_hits), t2 - t0)
        if on_checkpoint is not None:
            on_checkpoint(
                checkpoint.make_state(
                    spec.run_id, epoch, model, opt, checkpoint.rng_state(gen), p.best(), p.history,
                    {**p.timings, "total": time.perf_counter() - start}, p.step, mode.state_dict(),
                )  # fmt: skip
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch, entry)

    model.load_state_dict(p.best_state)
    t3 = time.perf_counter()
    test_hits: list = []
    test_acc = evaluate(model, pipe.eval_batches("test", t.eval_batch_size), len(cols), device, bf16, forward, test_hits)
    if p.best_val_correct is None:  # resumed from a checkpoint that did not keep it
        hits: list = []
        evaluate(model, pipe.eval_batches("val", t.eval_batch_size), len(cols), device, bf16, forward, hits)
        p.best_val_correct = torch.cat(hits)
    p.timings["eval"] += time.perf_counter() - t3
    p.timings["total"] = time.perf_counter() - start
    return p.result(spec, data, device, test_acc, torch.cat(test_hits), {"input": pipe.describe()}, mode.result_extra())

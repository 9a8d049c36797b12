"""Train one RunSpec: Adam, step lr decay, per-epoch validation, best epoch kept, test reported.

One epoch loop (``run_epochs``) for every mode (paper section 3, appendix A.3, the ablations of
section 4.2.1) and for a pack of runs trained as one fused model (``aal_k8s.packs``): it trains
the ``Run``s of a ``Trainer``, which says how a batch updates them, how they are validated and
what a run's checkpoint is. ``train_run``'s trainer is one run whose mode (its objective, frozen
parts, per-step hooks, extra state) is the ``Mode`` object of ``aal_k8s.train.modes``; the pack's
steps its members' fused backbone.

What a run keeps between epochs (history, the best epoch, timings, the global step) and how it
becomes a checkpoint's entries and the ``RunResult`` is ``aal_k8s.train.progress``.

Checkpoints (``aal_k8s.train.checkpoint``): ``on_checkpoint`` receives the whole training state
after every epoch; passing such a state back as ``resume_state`` continues after that epoch, and on
CPU the resumed run ends with bitwise the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from aal_k8s.config import TrainConfig, config_from_dict
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


EpochHook = Callable[[int, dict], None]  # (epoch, history entry)
CheckpointHook = Callable[[dict], None]  # (checkpoint state)
RunEpochHook = Callable[[str, int, dict], None]  # (run id, epoch, history entry)
RunCheckpointHook = Callable[[str, dict], None]  # (run id, checkpoint state)


class DivergedError(AALError):
    """The loss or the weights became NaN/inf: the run stops and nothing of it is committed.
    Exit 1 (a retry resumes from the last finite checkpoint; a setting that always diverges
    fails its retries too, each with this one line)."""

    exit_code = 1


def _check_finite(spec: RunSpec, epoch: int, model, loss_sum: torch.Tensor) -> None:
    """``DivergedError`` naming the first non-finite head loss or tensor. Once per epoch, not
    per step: one device sync, and a diverged step cannot become finite again."""
    bad = [name for name, v in zip(spec.heads, loss_sum.tolist()) if not math.isfinite(v)]
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


def steps_per_epoch(pipe, t: TrainConfig) -> int:
    """Optimizer steps in one epoch (the last batch may be short)."""
    return max(1, -(-pipe.size("train") // t.batch_size))


@dataclass
class Run:
    """A run in the epoch loop: trained alone, or a member of a pack (``aal_k8s.packs``)."""

    spec: RunSpec
    model: AttributeNet
    opt: torch.optim.Optimizer
    mode: Mode
    p: Progress  # history, best epoch, timings, global step


class Trainer(Protocol):
    """What differs between one run and a fused pack of them; ``run_epochs`` calls it."""

    runs: list[Run]  # all after the same epoch
    gen: torch.Generator  # the shuffle generator: one input stream for every run
    device: torch.device

    def train_mode(self) -> None:
        """At the start of every epoch's training pass."""

    def step(self, x: torch.Tensor, y: torch.Tensor, steps_total: int) -> list[torch.Tensor]:
        """One update of every run on batch (x, y), counted in its ``p.step``; each run's
        per-head losses [K], detached. ``steps_total``: the steps of the whole training."""

    def after_train(self) -> None:
        """After an epoch's training pass, before anything reads a run's weights."""

    def validate(self) -> list[tuple[list[float], torch.Tensor]]:
        """Each run's per-head validation accuracy and bool [val images, heads] correctness."""

    def checkpoint(self, run: Run, epoch: int, total: float) -> dict:
        """``run``'s checkpoint after ``epoch`` (``total``: its running seconds)."""


def run_epochs(
    trainer: Trainer, pipe, t: TrainConfig, end: int, on_checkpoint: RunCheckpointHook | None, on_epoch_end: RunEpochHook | None
) -> None:
    """Train ``trainer.runs`` to epoch ``end``: after every epoch each run is checked finite,
    validated, recorded (best epoch kept) and checkpointed. The wall time is split evenly over the
    runs, so run-seconds add up to the time spent."""
    runs = trainer.runs
    k = len(runs)
    steps_total = t.epochs * steps_per_epoch(pipe, t)
    started = time.perf_counter()
    for epoch in range(runs[0].p.epoch + 1, end + 1):
        lr = lr_at(epoch, t.lr, t.lr_decay_epoch, t.lr_decay_factor)
        for r in runs:
            for group in r.opt.param_groups:
                group["lr"] = lr
        trainer.train_mode()
        t0 = time.perf_counter()
        loss_sums = [torch.zeros(len(r.spec.heads), device=trainer.device) for r in runs]
        steps = 0
        for x, y in pipe.train_batches(t.batch_size, trainer.gen, epoch):
            for acc, loss in zip(loss_sums, trainer.step(x, y, steps_total)):
                acc += loss
            steps += 1
        trainer.after_train()
        for r, acc in zip(runs, loss_sums):
            _check_finite(r.spec, epoch, r.model, acc)  # before anything of this epoch is kept
        t1 = time.perf_counter()
        validated = trainer.validate()
        t2 = time.perf_counter()
        for r, acc, (val_acc, val_correct) in zip(runs, loss_sums, validated):
            r.p.timings["train"] += (t1 - t0) / k
            r.p.timings["eval"] += (t2 - t1) / k
            r.p.timings.update(r.mode.timings())
            r.p.record(r.spec, r.model, epoch, lr, acc / max(1, steps), val_acc, val_correct, (t2 - t0) / k)
        total = (time.perf_counter() - started) / k
        for r in runs:
            if on_checkpoint is not None:
                on_checkpoint(r.spec.run_id, trainer.checkpoint(r, epoch, r.p.seconds_before + total))
            if on_epoch_end is not None:
                on_epoch_end(r.spec.run_id, epoch, r.p.history[-1])
    for r in runs:
        r.p.seconds_before += (time.perf_counter() - started) / k


EvaluateAlone = Callable[[Run, str], tuple[list[float], torch.Tensor]]  # (run, split) -> (accuracy per head, correctness)


def finish(run: Run, data: LoadedDataset, device: torch.device, evaluate: EvaluateAlone, environment: dict[str, str]) -> RunResult:
    """``run``'s result: its best weights loaded and tested through its own model (validated too
    when it resumed from a checkpoint that did not keep the best epoch's per-image correctness)."""
    p = run.p
    t3 = time.perf_counter()
    run.model.load_state_dict(p.best_state)
    test_acc, test_correct = evaluate(run, "test")
    if p.best_val_correct is None:
        _, p.best_val_correct = evaluate(run, "val")
    p.timings["eval"] += time.perf_counter() - t3
    p.timings["total"] = p.seconds_before + time.perf_counter() - t3
    return p.result(run.spec, data, device, test_acc, test_correct, environment, run.mode.result_extra())


class _Alone:
    """``Trainer`` of one run on its own model: its mode's hooks around every step."""

    def __init__(self, run: Run, gen: torch.Generator, device: torch.device, pipe, t: TrainConfig, features, forward):
        self.runs, self.gen, self.device = [run], gen, device
        self.pipe, self.t, self.features, self.forward = pipe, t, features, forward

    def train_mode(self) -> None:
        (r,) = self.runs
        r.mode.train_mode(r.model)

    def step(self, x: torch.Tensor, y: torch.Tensor, steps_total: int) -> list[torch.Tensor]:
        (r,) = self.runs
        r.mode.before_step(r.p.step, x, y)
        lam = r.mode.lam_at(r.p.step / steps_total)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.pipe.bf16):
            h = self.features(x)
        # the heads take bf16 or fp32 features and accumulate in fp32 (outside autocast)
        loss, total = r.mode.loss(h, r.model, y, lam)
        r.opt.zero_grad(set_to_none=True)
        total.backward()
        r.opt.step()
        r.mode.after_step(r.model)
        r.p.step += 1
        return [loss.detach()]

    def after_train(self) -> None:
        pass  # the model's own batch norms hold its statistics

    def validate(self) -> list[tuple[list[float], torch.Tensor]]:
        return [self.evaluate_alone(self.runs[0], "val")]

    def evaluate_alone(self, run: Run, split: str) -> tuple[list[float], torch.Tensor]:
        """Accuracy per head and per-image correctness of ``run`` on ``split`` (``EvaluateAlone``)."""
        hits: list = []
        batches = self.pipe.eval_batches(split, self.t.eval_batch_size)
        acc = evaluate(run.model, batches, len(run.spec.heads), self.device, self.pipe.bf16, self.forward, hits)
        return acc, torch.cat(hits)

    def checkpoint(self, run: Run, epoch: int, total: float) -> dict:
        p = run.p
        return checkpoint.make_state(
            run.spec.run_id, epoch, run.model, run.opt, checkpoint.rng_state(self.gen), p.best(), p.history,
            {**p.timings, "total": total}, p.step, run.mode.state_dict(),
        )  # fmt: skip


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
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    forward = torch.compile(model.forward) if t.compile else model
    features = mode.features(model, t.compile)
    mode.start(model, opt, pipe, t.batch_size)

    p = Progress()
    if resume_state is not None:
        epoch = checkpoint.restore(resume_state, spec.run_id, model, opt, gen)
        p = Progress.resumed(resume_state, device, default_step=epoch * steps_per_epoch(pipe, t))
        mode.resume(resume_state, pipe, t.batch_size)
    run = Run(spec, model, opt, mode, p)
    trainer = _Alone(run, gen, device, pipe, t, features, forward)
    run_epochs(
        trainer, pipe, t, t.epochs,
        on_checkpoint and (lambda _, state: on_checkpoint(state)),
        on_epoch_end and (lambda _, epoch, entry: on_epoch_end(epoch, entry)),
    )  # fmt: skip
    return finish(run, data, device, trainer.evaluate_alone, {"input": pipe.describe()})

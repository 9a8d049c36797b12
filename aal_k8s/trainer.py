"""Train one RunSpec: Adam, step lr decay, per-epoch validation, best epoch kept, test reported.

Modes (paper section 3, appendix A.3, and the ablations of section 4.2.1):
  single       one primary head
  multi        several primary heads sharing the backbone (pairwise runs have two)
  adversarial  primary heads + auxiliary heads behind gradient reversal: the backbone gets the
               gradient of mean primary BCE - lambda * mean auxiliary BCE, the auxiliary heads
               minimise their own BCE (eq. 6/10/11). The head maths sits behind
               ``aal_k8s.heads.head_losses``, which the fused operator implements.
  gan, wgan    the GAN (eq. 4/5) and Wasserstein-critic objectives of ``aal_k8s.objectives``
  shared       adversarial on ``hidden_layers`` hidden layers over a frozen CNN (the multi-task
               run's backbone, given as ``init_state``); only hidden layers and heads train
  affinity     multi, plus lookahead inter-task affinity measured every k steps
               (``aal_k8s.affinity``); the measurements leave the training trajectory unchanged
The options ``lambda_schedule: dann`` (+ ``dann_alpha``) ramp lambda up over training (DANN).

The best epoch is the one with the highest mean validation accuracy over the primary heads
(earliest on ties); val and test accuracy of every head are reported at that epoch.

Checkpoints: ``on_checkpoint`` receives the whole training state after every epoch (model,
optimizer, lr schedule, RNG states including the shuffle generator, best-so-far, history, timings;
tensors and primitives only, so it loads with ``torch.load(weights_only=True)``); passing such a
state back as ``resume_state`` continues after that epoch, and on CPU the resumed run ends with
bitwise the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from aal_k8s.config import config_from_dict
from aal_k8s.data import LoadedDataset
from aal_k8s.data.pipeline import pipeline_for_run
from aal_k8s.heads import head_coefficients, head_losses
from aal_k8s.model import AttributeNet
from aal_k8s.errors import AALError
from aal_k8s.runspec import ADVERSARIAL_MODES, RunSpec


@dataclass
class RunResult:
    run_id: str
    heads: list[str]
    best_epoch: int  # 1-based
    val_acc: dict[str, float]  # per head, at the best epoch
    test_acc: dict[str, float]
    history: list[dict]  # one entry per epoch
    timings: dict[str, float]  # seconds
    environment: dict[str, str]
    state_dict: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    extra: dict = field(default_factory=dict)  # split_sizes, label_corr, affinity: merged into metrics

    def metrics(self) -> dict:
        """The JSON-able part (everything but the weights)."""
        return {
            "run_id": self.run_id,
            "heads": self.heads,
            "best_epoch": self.best_epoch,
            "val_acc": self.val_acc,
            "test_acc": self.test_acc,
            "history": self.history,
            "timings": self.timings,
            "environment": self.environment,
            **self.extra,
        }


def pick_device(name: str, setting: str = "train.device") -> torch.device:
    """The torch device for ``auto`` | ``cpu`` | ``cuda``; an asked-for GPU that is not there is
    one line naming ``setting``, not a traceback from deep inside torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AALError(f"{setting}: cuda was asked for, but this machine has no usable CUDA device")
    return torch.device(name)


def lr_at(epoch: int, base_lr: float, decay_epoch: int, factor: float) -> float:
    """Learning rate of 1-based ``epoch``: divided by ``factor`` from ``decay_epoch`` on."""
    return base_lr / factor if epoch >= decay_epoch else base_lr


@torch.no_grad()
def evaluate(model: AttributeNet, batches, n_heads: int, device: torch.device, bf16: bool = False, forward=None) -> list[float]:
    """Accuracy of each head (threshold 0.5 on the sigmoid) over ``batches`` (x, y) of a split;
    counts stay on the device until the end (one host synchronisation per evaluation)."""
    model.eval()
    forward = forward or model
    correct = torch.zeros(n_heads, dtype=torch.long, device=device)
    n = 0
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        correct += ((logits > 0) == (y > 0.5)).sum(0)
        n += y.shape[0]
    return (correct.double() / max(1, n)).tolist()


EpochHook = Callable[[int, dict], None]
CheckpointHook = Callable[[dict], None]
CHECKPOINT_FORMAT = 1


def _cpu(tree):
    """Tensors of a (nested) state dict on the CPU (no copy when they already are)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu(v) for v in tree)
    return tree


def _restore(state: dict, spec: RunSpec, model, opt, gen: torch.Generator) -> int:
    """Load a checkpoint made by ``train_run`` into model/optimizer/RNGs; returns its epoch."""
    if state.get("format") != CHECKPOINT_FORMAT or state.get("run_id") != spec.run_id:
        raise ValueError(f"checkpoint is for run {state.get('run_id')!r} format {state.get('format')!r}, "
                         f"not run {spec.run_id!r} format {CHECKPOINT_FORMAT}")  # fmt: skip
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch_cpu"])
    if rng.get("torch_cuda") and torch.cuda.is_available() and len(rng["torch_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["torch_cuda"])
    gen.set_state(rng["shuffle"])
    return int(state["epoch"])


def label_correlation(labels: torch.Tensor) -> list[list[float]]:
    """Pearson r between the label columns of ``labels [N, K]`` (0 where a column is constant)."""
    if labels.shape[1] < 2:
        return [[1.0]] * labels.shape[1]
    r = torch.corrcoef(labels.double().t())
    return torch.nan_to_num(r, nan=0.0).tolist()


def _cycle_batches(pipe, split: str, batch_size: int):
    """The split's batches in order, over and over (the k-th affinity measurement takes the k-th)."""
    while True:
        yield from pipe.eval_batches(split, batch_size)


def _scheduled_lambda(spec: RunSpec, lam: float, progress: float) -> float:
    if spec.options.get("lambda_schedule", "constant") == "dann":
        from aal_k8s.objectives import dann_lambda

        return dann_lambda(lam, progress, spec.options.get("dann_alpha", 10.0))
    return lam


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
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)

    cols = [data.attributes.index(a) for a in spec.heads]
    n_p = len(spec.primary)
    # channels_last: 1.6x faster convolutions on CPU (oneDNN) and the layout tensor cores want
    n_aux = len(spec.auxiliary)
    shared = spec.mode == "shared"
    hidden = int(spec.options.get("hidden_layers", 0)) if shared else 0
    # the shared ablation's CNN comes from init_state: no point loading ImageNet weights first
    model = AttributeNet(m.backbone, "none" if spec.init_from else m.pretrained, spec.heads, hidden_layers=hidden)
    if spec.init_from:
        if init_state is None:
            raise AALError(f"run {spec.run_id}: starts from the weights of run {spec.init_from}, which were not given")
        model.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in init_state.items() if k.startswith("backbone.")})
    if shared:
        model.backbone.requires_grad_(False)  # frozen: only the hidden layers and heads train
    model = model.to(device, memory_format=torch.channels_last)
    # fused Adam on CUDA: one kernel for all parameters (CPU keeps the default, bitwise as before)
    fused = True if device.type == "cuda" else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    lam = spec.lam if spec.mode in ADVERSARIAL_MODES else 0.0
    loss_w, feat_c = head_coefficients(n_p, n_aux, lam, device=device)
    if spec.mode in ("gan", "wgan"):
        from aal_k8s.objectives import clip_critic_, gan_losses, wgan_losses

        objective = gan_losses if spec.mode == "gan" else wgan_losses
    # input pipeline (aal_k8s.data.pipeline): splits resident on the device when decoded, batches
    # augmented there; bf16 autocast on CUDA by default (train.precision)
    pipe = pipeline_for_run(data, cols, cfg, device, spec.seed)
    bf16 = pipe.bf16
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    forward = torch.compile(model.forward) if t.compile else model
    if shared:

        def features(x, _hidden=torch.compile(model.hidden) if t.compile else model.hidden):
            with torch.no_grad():  # the frozen CNN needs no graph
                h = model.backbone(x)
            return _hidden(h)

    else:
        features = torch.compile(model.features) if t.compile else model.features

    affinity = None
    if spec.mode == "affinity":
        from aal_k8s.affinity import LookaheadAffinity

        affinity = LookaheadAffinity(model, opt, len(cols), every=int(spec.options["every"]), window=int(spec.options.get("window", 0)))
    held_out = None
    if affinity is not None and spec.options.get("measure_on", "train") == "val":
        held_out = _cycle_batches(pipe, "val", t.batch_size)
    steps_per_epoch = max(1, -(-pipe.size("train") // t.batch_size))
    step = 0  # global training step (affinity measurements and the lambda schedule count in it)

    history: list[dict] = []
    best_score, best_epoch, best_state = -1.0, 0, None
    timings = {"train": 0.0, "eval": 0.0}
    first = 1
    if resume_state is not None:
        first = _restore(resume_state, spec, model, opt, gen) + 1
        history = list(resume_state["history"])
        best = resume_state["best"]
        best_score, best_epoch = float(best["score"]), int(best["epoch"])
        best_state = {k: v.to(device) for k, v in best["state"].items()}
        timings = {k: float(v) for k, v in resume_state["timings"].items()}
        step = int(resume_state.get("step", (first - 1) * steps_per_epoch))
        if affinity is not None:
            affinity.load_state_dict(resume_state["affinity"])
            n_val_batches = -(-pipe.size("val") // t.batch_size)
            for _ in range(affinity.measurements % n_val_batches if held_out is not None else 0):
                next(held_out)  # the held-out batches continue where the interrupted run was
    start = time.perf_counter() - timings.pop("total", 0.0)
    for epoch in range(first, t.epochs + 1):
        lr = lr_at(epoch, t.lr, t.lr_decay_epoch, t.lr_decay_factor)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        if shared:
            model.backbone.eval()  # frozen, batch-norm statistics included
        t0 = time.perf_counter()
        loss_sum = torch.zeros(len(cols), device=device)
        steps = 0
        for x, y in pipe.train_batches(t.batch_size, gen, epoch):
            if affinity is not None and affinity.due(step):
                # restores parameters, buffers and optimizer state bitwise
                affinity.measure(x, y, held_out=next(held_out) if held_out is not None else None)
            lam_t = _scheduled_lambda(spec, lam, step / (t.epochs * steps_per_epoch)) if n_aux else 0.0
            if lam_t != lam and spec.mode not in ("gan", "wgan"):
                loss_w, feat_c = head_coefficients(n_p, n_aux, lam_t, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                h = features(x)
            # the heads take bf16 or fp32 features and accumulate in fp32 (outside autocast)
            if spec.mode in ("gan", "wgan"):
                loss, total = objective(h, model.head_weight, model.head_bias, y, n_p, lam_t)
            else:
                loss, _ = head_losses(h, model.head_weight, model.head_bias, y, loss_w, feat_c, impl=t.heads_impl)
                total = loss.sum()
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            if spec.mode == "wgan":
                clip_critic_(model.head_weight, model.head_bias, n_p, float(spec.options["clip"]))
            loss_sum += loss.detach()
            steps += 1
            step += 1
        _check_finite(spec, epoch, model, loss_sum, spec.heads)  # before anything of this epoch is kept
        t1 = time.perf_counter()
        val_acc = evaluate(model, pipe.eval_batches("val", t.eval_batch_size), len(cols), device, bf16, forward)
        t2 = time.perf_counter()
        timings["train"] += t1 - t0
        timings["eval"] += t2 - t1
        if affinity is not None:
            timings["affinity"] = affinity.seconds  # inside "train" too: the measurements' share of it
        score = sum(val_acc[:n_p]) / n_p
        entry = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": dict(zip(spec.heads, (loss_sum / max(1, steps)).tolist())),
            "val_acc": dict(zip(spec.heads, val_acc)),
            "seconds": t2 - t0,
        }
        history.append(entry)
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        if on_checkpoint is not None:
            on_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "run_id": spec.run_id,
                    "epoch": epoch,
                    "model": _cpu(model.state_dict()),
                    "optimizer": _cpu(opt.state_dict()),
                    "scheduler": {
                        "kind": "step",
                        "lr": lr,
                        "base_lr": t.lr,
                        "decay_epoch": t.lr_decay_epoch,
                        "factor": t.lr_decay_factor,
                    },
                    "grl": {"mode": spec.mode, "lambda": lam, "n_primary": n_p, "n_auxiliary": len(spec.auxiliary)},
                    "rng": {
                        "torch_cpu": torch.get_rng_state(),
                        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                        "shuffle": gen.get_state(),
                    },
                    "best": {"score": best_score, "epoch": best_epoch, "state": _cpu(best_state)},
                    "history": history,
                    "timings": {**timings, "total": time.perf_counter() - start},
                    "step": step,
                    **({"affinity": affinity.state_dict()} if affinity is not None else {}),
                }
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch, entry)

    model.load_state_dict(best_state)
    t3 = time.perf_counter()
    test_acc = evaluate(model, pipe.eval_batches("test", t.eval_batch_size), len(cols), device, bf16, forward)
    timings["eval"] += time.perf_counter() - t3
    timings["total"] = time.perf_counter() - start
    result = RunResult(
        run_id=spec.run_id,
        heads=spec.heads,
        best_epoch=best_epoch,
        val_acc=history[best_epoch - 1]["val_acc"],
        test_acc=dict(zip(spec.heads, test_acc)),
        history=history,
        timings=timings,
        environment={
            "torch": torch.__version__,
            "device": str(device),
            "threads": str(torch.get_num_threads()),
            "input": pipe.describe(),
        },
        state_dict={k: v.detach().cpu().contiguous() for k, v in best_state.items()},
        extra={
            "split_sizes": {name: len(split) for name, split in data.splits.items()},
            "label_corr": label_correlation(data.splits["train"].labels[:, cols]),
        },
    )
    if affinity is not None:
        result.extra["affinity"] = {
            "tasks": spec.heads,
            "z": affinity.matrix(),  # z[i][j] = Z(i -> j): a step for task i, measured on task j
            "measurements": affinity.measurements,
            "every": int(spec.options["every"]),
            "window": int(spec.options.get("window", 0)),
        }
    if first > 1:
        result.environment["resumed_after_epoch"] = str(first - 1)
    return result

"""Train one RunSpec: Adam, step lr decay, per-epoch validation, best epoch kept, test reported.

Modes (paper section 3 and appendix A.3):
  single       one primary head
  multi        several primary heads sharing the backbone (pairwise runs have two)
  adversarial  primary heads + auxiliary heads behind gradient reversal: the backbone gets the
               gradient of mean primary BCE - lambda * mean auxiliary BCE, the auxiliary heads
               minimise their own BCE (eq. 6/10/11). The head maths sits behind
               ``aal_k8s.heads.head_losses``, which the fused operator implements.

The best epoch is the one with the highest mean validation accuracy over the primary heads
(earliest on ties); val and test accuracy of every head are reported at that epoch.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from aal_k8s.config import config_from_dict
from aal_k8s.data import LoadedDataset, Split
from aal_k8s.heads import head_coefficients, head_losses
from aal_k8s.model import AttributeNet
from aal_k8s.runspec import RunSpec


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
        }


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at(epoch: int, base_lr: float, decay_epoch: int, factor: float) -> float:
    """Learning rate of 1-based ``epoch``: divided by ``factor`` from ``decay_epoch`` on."""
    return base_lr / factor if epoch >= decay_epoch else base_lr


class Preprocess:
    """uint8 NCHW -> normalised float on ``device``; train batches get a random horizontal flip."""

    def __init__(self, mean, std, device: torch.device, flip: bool):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.device = device
        self.flip = flip

    def __call__(self, images: torch.Tensor, train: bool, gen: torch.Generator | None = None) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if train and self.flip:
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x[flip.to(x.device)] = x[flip.to(x.device)].flip(-1)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(model: AttributeNet, split: Split, cols: list[int], prep: Preprocess, batch_size: int) -> list[float]:
    """Accuracy of each head (threshold 0.5 on the sigmoid) over the whole split."""
    model.eval()
    correct = torch.zeros(len(cols), dtype=torch.long, device=prep.device)
    labels = split.labels[:, cols]
    for start in range(0, len(split), batch_size):
        x = prep(split.images[start : start + batch_size], train=False)
        y = labels[start : start + batch_size].to(prep.device)
        correct += ((model(x) > 0) == (y > 0.5)).sum(0)
    return (correct.double() / max(1, len(split))).tolist()


EpochHook = Callable[[int, dict], None]


def train_run(spec: RunSpec, data: LoadedDataset, on_epoch_end: EpochHook | None = None) -> RunResult:
    """Train ``spec`` on ``data`` and return the best epoch's metrics and weights."""
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
    model = AttributeNet(m.backbone, m.pretrained, spec.heads).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    lam = spec.lam if spec.mode == "adversarial" else 0.0
    loss_w, feat_c = head_coefficients(n_p, len(spec.auxiliary), lam, device=device)
    prep = Preprocess(data.mean, data.std, device, flip=spec.dataset != "synthetic")
    train, val = data.splits["train"], data.splits["val"]
    train_labels = train.labels[:, cols]

    history: list[dict] = []
    best_score, best_epoch, best_state = -1.0, 0, None
    timings = {"train": 0.0, "eval": 0.0}
    start = time.perf_counter()
    for epoch in range(1, t.epochs + 1):
        lr = lr_at(epoch, t.lr, t.lr_decay_epoch, t.lr_decay_factor)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(train), generator=gen)
        loss_sum = torch.zeros(len(cols), device=device)
        steps = 0
        for s in range(0, len(order), t.batch_size):
            idx = order[s : s + t.batch_size]
            x = prep(train.images[idx], train=True, gen=gen)
            y = train_labels[idx].to(device, non_blocking=True)
            h = model.features(x)
            loss, _ = head_losses(h, model.head_weight, model.head_bias, y, loss_w, feat_c, impl=t.heads_impl)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            loss_sum += loss.detach()
            steps += 1
        t1 = time.perf_counter()
        val_acc = evaluate(model, val, cols, prep, t.eval_batch_size)
        t2 = time.perf_counter()
        timings["train"] += t1 - t0
        timings["eval"] += t2 - t1
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
        if on_epoch_end is not None:
            on_epoch_end(epoch, entry)

    model.load_state_dict(best_state)
    t3 = time.perf_counter()
    test_acc = evaluate(model, data.splits["test"], cols, prep, t.eval_batch_size)
    timings["eval"] += time.perf_counter() - t3
    timings["total"] = time.perf_counter() - start
    return RunResult(
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
        },
        state_dict={k: v.detach().cpu().contiguous() for k, v in best_state.items()},
    )

"""One run's bookkeeping across epochs, the same for a run trained alone (``train.loop``) and a
member of a pack (``aal_k8s.packs``): its history, the best epoch so far (its weights and per-image
validation correctness), its timings and global step, what a checkpoint keeps of them and what
its ``RunResult`` reports. One copy, so a member's checkpoint and result cannot drift from a lone
run's.

The best epoch is the one with the highest mean validation accuracy over the primary heads
(earliest on ties); val and test accuracy of every head are reported at that epoch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from aal_k8s.data import LoadedDataset
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
    # split ("val" at the best epoch, "test") -> bool [images, heads]: decision == label, per image
    correct: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
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


def label_correlation(labels: torch.Tensor) -> list[list[float]]:
    """Pearson r between the label columns of ``labels [N, K]`` (0 where a column is constant)."""
    if labels.shape[1] < 2:
        return [[1.0]] * labels.shape[1]
    r = torch.corrcoef(labels.double().t())
    return torch.nan_to_num(r, nan=0.0).tolist()


@dataclass
class Progress:
    """A run's state between epochs beside its model, optimizer and RNGs (those the caller keeps)."""

    history: list[dict] = field(default_factory=list)  # one entry per epoch done
    best_score: float = -1.0
    best_epoch: int = 0  # 1-based; 0: no epoch yet
    best_state: dict[str, torch.Tensor] | None = None
    best_val_correct: torch.Tensor | None = None  # bool [val images, heads] at the best epoch
    timings: dict[str, float] = field(default_factory=lambda: {"train": 0.0, "eval": 0.0})  # seconds
    seconds_before: float = 0.0  # the running total of the checkpoint it resumed from
    step: int = 0  # global training step (the lambda schedule and affinity measurements count in it)
    resumed_after: int = 0  # the epoch of the checkpoint it resumed from (0: from scratch)

    @classmethod
    def resumed(cls, state: dict, device: torch.device, default_step: int | None = None) -> Progress:
        """The bookkeeping of checkpoint ``state``; ``default_step``: its global step when the
        checkpoint predates recording it (None: it must record it)."""
        best = state["best"]
        timings = {k: float(v) for k, v in state["timings"].items()}
        return cls(
            history=list(state["history"]),
            best_score=float(best["score"]),
            best_epoch=int(best["epoch"]),
            best_state={k: v.to(device) for k, v in best["state"].items()},
            best_val_correct=best.get("val_correct"),  # None in checkpoints of older versions: re-evaluated at the end
            seconds_before=timings.pop("total", 0.0),
            timings=timings,
            step=int(state["step"] if default_step is None else state.get("step", default_step)),
            resumed_after=int(state["epoch"]),
        )

    @property
    def epoch(self) -> int:
        """The last epoch done (the history has one entry per epoch, from 1)."""
        return len(self.history)

    def record(self, spec: RunSpec, model, epoch: int, lr: float, train_loss: torch.Tensor, val_acc: list[float],
               val_correct: torch.Tensor, seconds: float) -> dict:  # fmt: skip
        """Append epoch ``epoch``'s history entry (``train_loss``: the per-head mean) and keep the
        model's weights and ``val_correct`` if it is the best epoch so far; returns the entry."""
        n_p = len(spec.primary)
        score = sum(val_acc[:n_p]) / n_p
        entry = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": dict(zip(spec.heads, train_loss.tolist())),
            "val_acc": dict(zip(spec.heads, val_acc)),
            "seconds": seconds,
        }
        self.history.append(entry)
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_state = copy.deepcopy(model.state_dict())
            self.best_val_correct = val_correct
        return entry

    def best(self) -> dict:
        """The checkpoint's ``best`` entry."""
        return {"score": self.best_score, "epoch": self.best_epoch, "state": self.best_state, "val_correct": self.best_val_correct}

    def result(self, spec: RunSpec, data: LoadedDataset, device: torch.device, test_acc: list[float],
               test_correct: torch.Tensor, environment: dict[str, str], extra: dict) -> RunResult:  # fmt: skip
        """The run's result at its best epoch (``best_val_correct`` filled in by then);
        ``environment``/``extra``: entries beyond the common ones."""
        cols = [data.attributes.index(a) for a in spec.heads]
        result = RunResult(
            run_id=spec.run_id,
            heads=spec.heads,
            best_epoch=self.best_epoch,
            val_acc=self.history[self.best_epoch - 1]["val_acc"],
            test_acc=dict(zip(spec.heads, test_acc)),
            history=self.history,
            timings=self.timings,
            environment={"torch": torch.__version__, "device": str(device), "threads": str(torch.get_num_threads()), **environment},
            state_dict={k: v.detach().cpu().contiguous() for k, v in self.best_state.items()},
            correct={"val": self.best_val_correct.cpu(), "test": test_correct.cpu()},
            extra={
                "split_sizes": {name: len(split) for name, split in data.splits.items()},
                "label_corr": label_correlation(data.splits["train"].labels[:, cols]),
                **extra,
            },
        )
        if self.resumed_after:
            result.environment["resumed_after_epoch"] = str(self.resumed_after)
        return result

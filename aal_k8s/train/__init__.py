"""Training one run: the generic epoch loop (``loop``), what each mode does in it (``modes``),
checkpoint save/restore (``checkpoint``), evaluation and the device."""

from aal_k8s.train.checkpoint import CHECKPOINT_FORMAT, make_state, restore, to_cpu
from aal_k8s.train.device import pick_device
from aal_k8s.train.evaluate import evaluate
from aal_k8s.train.loop import DivergedError, RunResult, label_correlation, lr_at, mode_of, train_run

__all__ = [
    "CHECKPOINT_FORMAT", "DivergedError", "RunResult", "evaluate", "label_correlation", "lr_at",
    "make_state", "mode_of", "pick_device", "restore", "to_cpu", "train_run",
]  # fmt: skip

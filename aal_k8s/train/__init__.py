"""Training one run: the generic epoch loop (``loop``), what each mode does in it (``modes``),
a run's bookkeeping between epochs and its result (``progress``, shared with the pack trainer),
checkpoint save/restore (``checkpoint``), evaluation and the device."""

from aal_k8s.train.checkpoint import CHECKPOINT_FORMAT, make_state, restore, rng_state, to_cpu
from aal_k8s.train.device import pick_device
from aal_k8s.train.evaluate import evaluate
from aal_k8s.train.loop import DivergedError, lr_at, mode_of, train_run
from aal_k8s.train.progress import Progress, RunResult, label_correlation

__all__ = [
    "CHECKPOINT_FORMAT", "DivergedError", "Progress", "RunResult", "evaluate", "label_correlation", "lr_at",
    "make_state", "mode_of", "pick_device", "restore", "rng_state", "to_cpu", "train_run",
]  # fmt: skip

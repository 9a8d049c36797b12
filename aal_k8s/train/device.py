"""The torch device a run trains (or a model predicts) on."""

from __future__ import annotations

import torch

from aal_k8s.errors import AALError


def pick_device(name: str, setting: str = "train.device") -> torch.device:
    """The torch device for ``auto`` | ``cpu`` | ``cuda``; an asked-for GPU that is not there is
    one line naming ``setting``, not a traceback from deep inside torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AALError(f"{setting}: cuda was asked for, but this machine has no usable CUDA device")
    return torch.device(name)

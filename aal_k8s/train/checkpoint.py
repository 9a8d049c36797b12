"""The training state saved after every epoch, and putting it back.

The state holds tensors and primitives only, so it loads with ``torch.load(weights_only=True)``:
model, optimizer, RNG states (the shuffle generator too), best-so-far, history, timings, the global
step, and the mode's own state (``aal_k8s.train.modes``, e.g. the affinity measurements). Passing
it back as ``resume_state`` continues after its epoch; on CPU the resumed run ends with bitwise the
same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import torch

#: Version of the checkpoint dict; a checkpoint of another format (or run) is refused.
CHECKPOINT_FORMAT = 1


def to_cpu(tree):
    """Tensors of a (nested) state dict on the CPU (no copy when they already are)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu(v) for v in tree)
    return tree


def rng_state(gen: torch.Generator) -> dict:
    """This process's RNG states and the shuffle generator's, as a checkpoint records them."""
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "shuffle": gen.get_state(),
    }


def make_state(
    run_id: str, epoch: int, model, opt, rng: dict, best: dict, history: list, timings: dict, step: int, mode_state: dict
) -> dict:
    """The checkpoint after ``epoch``. ``rng``: as ``rng_state`` gives them (a pack member: the
    states it would have alone); ``best``: score, epoch, state (weights) and val_correct (bool
    [val images, heads]) of the best epoch so far; ``timings`` with their running total."""
    return {
        "format": CHECKPOINT_FORMAT,
        "run_id": run_id,
        "epoch": epoch,
        "model": to_cpu(model.state_dict()),
        "optimizer": to_cpu(opt.state_dict()),
        "rng": rng,
        "best": {k: to_cpu(v) for k, v in best.items()},
        "history": history,
        "timings": timings,
        "step": step,
        **mode_state,
    }


def check(state: dict, run_id: str) -> None:
    """ValueError unless ``state`` is a checkpoint of run ``run_id`` in this format."""
    if state.get("format") != CHECKPOINT_FORMAT or state.get("run_id") != run_id:
        raise ValueError(f"checkpoint is for run {state.get('run_id')!r} format {state.get('format')!r}, "
                         f"not run {run_id!r} format {CHECKPOINT_FORMAT}")  # fmt: skip


def restore(state: dict, run_id: str, model, opt, gen: torch.Generator) -> int:
    """Load a checkpoint of run ``run_id`` into model/optimizer/RNGs; returns its epoch."""
    check(state, run_id)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch_cpu"])
    if rng.get("torch_cuda") and torch.cuda.is_available() and len(rng["torch_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["torch_cuda"])
    gen.set_state(rng["shuffle"])
    return int(state["epoch"])

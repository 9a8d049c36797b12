"""Many runs per process: a pack of runs trained as one horizontally fused array (``executor.runs_per_job``).

HFTA (Wang et al., MLSys 2021): runs that share the dataset, the architecture and the input stream
train side by side in one process, one fused model whose every convolution is a grouped convolution
with one group per member and whose batch norms normalise each member's channels apart (per-member
BN). One input batch feeds every member; each keeps its own labels, heads, λ, optimizer state and
initialisation, and commits as a separate run would: same run id, same store records, a checkpoint
per member in ``train_run``'s format, so any member resumes alone (``aal_k8s.train``) or in any
other pack.

How the fusion works: each member keeps its own ``AttributeNet`` and Adam, exactly as ``train_run``
builds them (same seed, same init, same optimizer state layout). Every step the members' backbone
parameters are concatenated along the output channels (``torch.cat``, differentiable) and fed to
the fused backbone through ``torch.func.functional_call``; the backward of the concatenation hands
each member its own gradient, and each member's Adam steps its own parameters. The fused batch norms
own the running statistics (``[members x C]``) and copy each member's slice back before anything
reads a member's state (evaluation, the best weights, checkpoints). The heads run per member
(``aal_k8s.heads.head_losses``: each member its own heads and λ), so the fused C++/CUDA head
operator is used unchanged.

Which runs may share a pack (``pack_key``): the same resolved dataset/model/train config and seed
(so the same batches in the same order, the same augmentation draws) and a mode whose loop is the
plain one: single, multi (pairwise) and adversarial, without ``init_from``. GAN/WGAN (alternating
critic), the shared ablation (frozen CNN + hidden layers) and affinity (lookahead steps) train alone.

Equivalence. A member's result equals the same run trained alone up to the rounding of grouped
versus ungrouped convolution kernels (tests/test_packs.py states the tolerance it measured);
everything else (data order, augmentation, init, heads, optimizer) is the same computation.

Timings: the seconds the pack spends training and evaluating are split evenly over its members, so
run-seconds add up to the wall time spent (a pack of 4 that is 2x faster shows each run at half the
seconds of a run alone); so are the worker's and the process's seconds (``timings.worker``,
``timings.process``: aal_k8s.worker.commit_result), which the plan and the live view read as what
one run costs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from aal_k8s.config import config_from_dict
from aal_k8s.data import LoadedDataset
from aal_k8s.data.pipeline import pipeline_for_run
from aal_k8s.errors import AALError
from aal_k8s.heads import head_coefficients, head_losses
from aal_k8s.model import AttributeNet
from aal_k8s.runspec import RunSpec
from aal_k8s.stages import ADVERSARIAL_MODES
from aal_k8s.train.checkpoint import CHECKPOINT_FORMAT
from aal_k8s.train.checkpoint import to_cpu as _cpu
from aal_k8s.train.device import pick_device
from aal_k8s.train.loop import RunResult, _check_finite, label_correlation, lr_at, mode_of

PACKABLE_MODES = ("single", "multi", "adversarial")


# -- which runs share a pack ------------------------------------------------------------------------
def pack_key(spec: RunSpec) -> str | None:
    """Runs with equal keys can train in one pack; None: the run trains alone (see the module doc)."""
    if spec.mode not in PACKABLE_MODES or spec.init_from:
        return None
    ident = {"stage": spec.stage, "dataset": spec.dataset, "seed": spec.seed, "config": spec.config}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def group_packs(specs: list[RunSpec], runs_per_job: int) -> list[list[RunSpec]]:
    """``specs`` in packs of at most ``runs_per_job`` (in the order given, members of one key
    together); runs that cannot be packed are packs of one. ``runs_per_job`` 1: one run each."""
    if runs_per_job <= 1:
        return [[s] for s in specs]
    groups: dict[str, list[RunSpec]] = {}
    out: list[list[RunSpec]] = []
    for s in specs:
        key = pack_key(s)
        if key is None:
            out.append([s])
        else:
            groups.setdefault(key, []).append(s)
    for members in groups.values():
        out += [members[i : i + runs_per_job] for i in range(0, len(members), runs_per_job)]
    return out


def pack_id(specs: list[RunSpec]) -> str:
    """A pack's name, from its members alone (sorted ids): the same runs always make the same pack,
    so a resubmitted pack finds its Job; a pack of one is its run."""
    if len(specs) == 1:
        return specs[0].run_id
    digest = hashlib.sha256("\n".join(sorted(s.run_id for s in specs)).encode()).hexdigest()[:10]
    return f"pack-{specs[0].stage[:4]}-{digest}"


# -- the fused backbone -----------------------------------------------------------------------------
def fuse_backbone(backbone: nn.Module, members: int) -> nn.Module:
    """A copy of ``backbone`` for ``members`` runs side by side: input the shared batch, the stem
    convolution with every member's filters, every later Conv2d grouped per member, every BatchNorm2d over
    ``members x C`` channels (each member's channels normalised apart), output ``[B, members x D]``.
    Modules without parameters (ReLU, pooling, flatten, identity, residual adds) act per channel and
    stay as they are; any other module with parameters cannot be fused."""
    fused = copy.deepcopy(backbone)
    first = True
    for name, mod in list(fused.named_modules()):
        if isinstance(mod, nn.Conv2d):
            # the stem (the first layer registered, which is the first applied in both backbones)
            # reads the shared batch: one ungrouped convolution with every member's filters, so no
            # copy of the input per member, and the same kernels as alone (the weight gradient of a
            # grouped 3-channel stem rounds differently)
            ins, groups = (mod.in_channels, mod.groups) if first else (members * mod.in_channels, members * mod.groups)
            new = nn.Conv2d(
                ins, members * mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                mod.dilation, groups, mod.bias is not None, mod.padding_mode,
            )  # fmt: skip
        elif isinstance(mod, nn.BatchNorm2d):
            new = nn.BatchNorm2d(members * mod.num_features, mod.eps, mod.momentum, mod.affine, mod.track_running_stats)
        elif any(True for _ in mod.parameters(recurse=False)):
            raise AALError(f"model.backbone: its {type(mod).__name__} layer {name!r} cannot be fused into a pack; "
                           f"set executor.runs_per_job=1")  # fmt: skip
        else:
            continue
        if first and not isinstance(mod, nn.Conv2d):
            raise AALError(f"model.backbone: its first layer {name!r} is not a convolution; packs need a convolutional stem")
        first = False
        parent, _, leaf = name.rpartition(".")
        setattr(fused.get_submodule(parent) if parent else fused, leaf, new)
    return fused


def _stacked(members: list[nn.Module], name: str) -> torch.Tensor:
    return torch.cat([m.get_parameter(name) for m in members])


class FusedBackbones:
    """The members' backbones as one fused module (parameters gathered each step, running
    statistics kept fused and handed back with ``sync_buffers``)."""

    def __init__(self, backbones: list[nn.Module]):
        self.members = backbones
        self.fused = fuse_backbone(backbones[0], len(backbones)).to(next(backbones[0].parameters()).device)
        self.fused = self.fused.to(memory_format=torch.channels_last)
        self.names = [n for n, _ in backbones[0].named_parameters()]
        with torch.no_grad():
            self._buffers_from_members()

    def _buffers_from_members(self) -> None:
        for name, buf in self.fused.named_buffers():
            parts = [m.get_buffer(name) for m in self.members]
            buf.copy_(parts[0] if buf.dim() == 0 else torch.cat(parts))  # num_batches_tracked: one counter

    @torch.no_grad()
    def sync_buffers(self) -> None:
        """Each member's slice of the fused running statistics into its own buffers."""
        for name, buf in self.fused.named_buffers():
            for i, m in enumerate(self.members):
                mine = m.get_buffer(name)
                mine.copy_(buf if buf.dim() == 0 else buf.view(len(self.members), -1)[i].view_as(mine))

    def train(self, mode: bool = True) -> None:
        self.fused.train(mode)
        for m in self.members:
            m.train(mode)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's features ``[B, D]`` for one shared batch ``x``."""
        k = len(self.members)
        params = {n: _stacked(self.members, n) for n in self.names}
        h = torch.func.functional_call(self.fused, params, (x,))
        return [part.contiguous() for part in h.view(h.shape[0], k, -1).unbind(1)]


# -- training ---------------------------------------------------------------------------------------
@dataclass
class _Member:
    spec: RunSpec
    cols: list[int]  # this member's label columns in the pack's label matrix
    model: AttributeNet
    opt: torch.optim.Optimizer
    lam: float
    rng: torch.Tensor  # the global RNG state after its init (what train_run's checkpoint records)
    history: list[dict] = field(default_factory=list)
    best_score: float = -1.0
    best_epoch: int = 0
    best_state: dict | None = None
    best_val_correct: torch.Tensor | None = None
    timings: dict = field(default_factory=lambda: {"train": 0.0, "eval": 0.0})
    seconds_before: float = 0.0  # "total" of the checkpoint it resumed from
    step: int = 0
    epoch: int = 0  # last epoch done
    shuffle: torch.Tensor | None = None  # the shuffle generator's state after that epoch
    resumed_after: int = 0  # the epoch of the checkpoint it started from (0: from scratch)


PackEpochHook = Callable[[str, int, dict], None]  # (run id, epoch, history entry)
PackCheckpointHook = Callable[[str, dict], None]  # (run id, train_run's checkpoint state)


def check_pack(specs: list[RunSpec]) -> None:
    keys = {pack_key(s) for s in specs}
    if None in keys or len(keys) != 1:
        ids = ", ".join(s.run_id for s in specs)
        raise AALError(f"runs {ids} cannot train in one pack: they differ in stage, dataset, config or seed, "
                       f"or a mode trains alone (packable: {', '.join(PACKABLE_MODES)})")  # fmt: skip


def train_pack(
    specs: list[RunSpec],
    data: LoadedDataset,
    on_epoch_end: PackEpochHook | None = None,
    resume_states: dict[str, dict] | None = None,
    on_checkpoint: PackCheckpointHook | None = None,
    until_epoch: int = 0,
) -> list[RunResult]:
    """Train the runs ``specs`` (one ``pack_key``) together; their results in order, as
    ``train_run`` would give each. ``resume_states``: run id -> a checkpoint state of that run
    (members at different epochs: the ones behind catch up first, as a smaller pack).
    ``on_checkpoint(run_id, state)`` after every member's epoch (serialise before returning).
    ``until_epoch``: stop after that epoch (a halving rung) and return no results."""
    check_pack(specs)
    cfg = config_from_dict(specs[0].config)
    t = cfg.train
    device = pick_device(t.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    resume_states = resume_states or {}
    pack_cols = sorted({data.attributes.index(a) for s in specs for a in s.heads})
    members = [_member(s, data, pack_cols, device, resume_states.get(s.run_id)) for s in specs]
    # one input stream for all: the members share the seed (pack_key), so their data order and
    # augmentation draws are the ones each would have alone
    pipe = pipeline_for_run(data, pack_cols, cfg, device, specs[0].seed)
    end = min(until_epoch, t.epochs) if until_epoch else t.epochs
    # members behind the others (a crash between two members' checkpoints) catch up first
    while True:
        epochs = sorted({m.epoch for m in members})
        behind = [m for m in members if m.epoch == epochs[0]]
        target = epochs[1] if len(epochs) > 1 else end
        if target > epochs[0]:
            _train(behind, pipe, cfg, device, target, on_epoch_end, on_checkpoint)
        if len(epochs) == 1:
            break
    if until_epoch and until_epoch < t.epochs:
        return []
    return [_result(m, data, pipe, cfg, device, len(members)) for m in members]


def _member(spec: RunSpec, data, pack_cols: list[int], device, state: dict | None) -> _Member:
    """The model and optimizer ``train_run`` builds for ``spec`` (same seed: same init)."""
    cfg = config_from_dict(spec.config)
    t, m = cfg.train, cfg.model
    torch.manual_seed(spec.seed)
    model = AttributeNet(m.backbone, m.pretrained, spec.heads).to(device, memory_format=torch.channels_last)
    fused_adam = True if device.type == "cuda" else None
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay,
                           fused=fused_adam)  # fmt: skip
    lam = spec.lam if spec.mode in ADVERSARIAL_MODES else 0.0
    cols = [pack_cols.index(data.attributes.index(a)) for a in spec.heads]
    mem = _Member(spec, cols, model, opt, lam, torch.get_rng_state())
    if state is not None:
        if state.get("format") != CHECKPOINT_FORMAT or state.get("run_id") != spec.run_id:
            raise AALError(f"run {spec.run_id}: checkpoint is for run {state.get('run_id')!r} format "
                           f"{state.get('format')!r}, not this run in format {CHECKPOINT_FORMAT}")  # fmt: skip
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        mem.rng = state["rng"]["torch_cpu"]
        mem.epoch = mem.resumed_after = int(state["epoch"])
        mem.history = list(state["history"])
        best = state["best"]
        mem.best_score, mem.best_epoch = float(best["score"]), int(best["epoch"])
        mem.best_state = {k: v.to(device) for k, v in best["state"].items()}
        mem.best_val_correct = best.get("val_correct")
        mem.timings = {k: float(v) for k, v in state["timings"].items()}
        mem.seconds_before = mem.timings.pop("total", 0.0)
        mem.step = int(state["step"])
        mem.shuffle = state["rng"]["shuffle"]
    return mem


def _train(members: list[_Member], pipe, cfg, device, end: int, on_epoch_end, on_checkpoint) -> None:
    """Train ``members`` (all after the same epoch) to epoch ``end``."""
    t = cfg.train
    k = len(members)
    gen = torch.Generator().manual_seed(members[0].spec.seed)
    if members[0].epoch:
        gen.set_state(members[0].shuffle)  # the same for every member after the same epoch
    backbones = FusedBackbones([m.model.backbone for m in members])
    steps_per_epoch = max(1, -(-pipe.size("train") // t.batch_size))
    coef = [head_coefficients(len(m.spec.primary), len(m.spec.auxiliary), m.lam, device=device) for m in members]
    modes = [mode_of(m.spec, device, t.heads_impl) for m in members]  # each member's lambda schedule
    started = time.perf_counter()
    for epoch in range(members[0].epoch + 1, end + 1):
        lr = lr_at(epoch, t.lr, t.lr_decay_epoch, t.lr_decay_factor)
        for m in members:
            for group in m.opt.param_groups:
                group["lr"] = lr
        backbones.train()
        t0 = time.perf_counter()
        loss_sums = [torch.zeros(len(m.cols), device=device) for m in members]
        steps = 0
        for x, y in pipe.train_batches(t.batch_size, gen, epoch):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=pipe.bf16):
                hs = backbones(x)
            total = 0.0
            losses = []
            for i, (m, h) in enumerate(zip(members, hs)):
                n_aux = len(m.spec.auxiliary)
                lam_t = modes[i].lam_at(m.step / (t.epochs * steps_per_epoch)) if n_aux else 0.0
                if lam_t != m.lam:
                    coef[i] = head_coefficients(len(m.spec.primary), n_aux, lam_t, device=device)
                loss, _ = head_losses(h, m.model.head_weight, m.model.head_bias, y[:, m.cols], *coef[i], impl=t.heads_impl)
                losses.append(loss)
                total = total + loss.sum()
            for m in members:
                m.opt.zero_grad(set_to_none=True)
            total.backward()  # members share no parameter: each gets exactly its own gradient
            for m, loss, acc in zip(members, losses, loss_sums):
                m.opt.step()
                acc += loss.detach()
                m.step += 1
            steps += 1
        backbones.sync_buffers()
        for m, acc in zip(members, loss_sums):
            _check_finite(m.spec, epoch, m.model, acc, m.spec.heads)
        t1 = time.perf_counter()
        val_hits = _evaluate(members, backbones, pipe, "val", t.eval_batch_size, device)
        t2 = time.perf_counter()
        for m, acc, hits in zip(members, loss_sums, val_hits):
            m.timings["train"] += (t1 - t0) / k
            m.timings["eval"] += (t2 - t1) / k
            val_acc = (hits.double().mean(0)).tolist()
            n_p = len(m.spec.primary)
            score = sum(val_acc[:n_p]) / n_p
            entry = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": dict(zip(m.spec.heads, (acc / max(1, steps)).tolist())),
                "val_acc": dict(zip(m.spec.heads, val_acc)),
                "seconds": (t2 - t0) / k,
            }
            m.history.append(entry)
            m.epoch = epoch
            if score > m.best_score:
                m.best_score, m.best_epoch = score, epoch
                m.best_state = copy.deepcopy(m.model.state_dict())
                m.best_val_correct = hits
            m.shuffle = gen.get_state()
        total_s = (time.perf_counter() - started) / k
        for m in members:
            if on_checkpoint is not None:
                on_checkpoint(m.spec.run_id, _checkpoint(m, epoch, m.seconds_before + total_s))
            if on_epoch_end is not None:
                on_epoch_end(m.spec.run_id, epoch, m.history[-1])
    for m in members:
        m.seconds_before += (time.perf_counter() - started) / k


def _checkpoint(m: _Member, epoch: int, total: float) -> dict:
    """``train_run``'s checkpoint of the member (``train.checkpoint.make_state``'s entries, with the
    member's own RNG state): it resumes alone as well as in a pack."""
    return {
        "format": CHECKPOINT_FORMAT,
        "run_id": m.spec.run_id,
        "epoch": epoch,
        "model": _cpu(m.model.state_dict()),
        "optimizer": _cpu(m.opt.state_dict()),
        "rng": {"torch_cpu": m.rng, "torch_cuda": [], "shuffle": m.shuffle},
        "best": {"score": m.best_score, "epoch": m.best_epoch, "state": _cpu(m.best_state), "val_correct": _cpu(m.best_val_correct)},
        "history": m.history,
        "timings": {**m.timings, "total": total},
        "step": m.step,
    }  # fmt: skip


@torch.no_grad()
def _evaluate(members: list[_Member], backbones: FusedBackbones | None, pipe, split: str, batch_size: int, device) -> list[torch.Tensor]:
    """Each member's bool [images, heads] correctness on ``split`` (threshold 0.5 on the sigmoid);
    ``backbones`` None: each member's own model (its best weights loaded)."""
    for m in members:
        m.model.eval()
    if backbones is not None:
        backbones.train(False)
    hits: list[list[torch.Tensor]] = [[] for _ in members]
    for x, y in pipe.eval_batches(split, batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=pipe.bf16):
            hs = backbones(x) if backbones is not None else [m.model.features(x) for m in members]
            for i, (m, h) in enumerate(zip(members, hs)):
                logits = h @ m.model.head_weight.t().to(h.dtype) + m.model.head_bias.to(h.dtype)
                hits[i].append((logits > 0) == (y[:, m.cols] > 0.5))
    return [torch.cat(h) for h in hits]


def _result(m: _Member, data, pipe, cfg, device, k: int) -> RunResult:
    t3 = time.perf_counter()
    m.model.load_state_dict(m.best_state)
    (test_hits,) = _evaluate([m], None, pipe, "test", cfg.train.eval_batch_size, device)
    if m.best_val_correct is None:  # resumed from a checkpoint that did not keep it
        (m.best_val_correct,) = _evaluate([m], None, pipe, "val", cfg.train.eval_batch_size, device)
    m.timings["eval"] += time.perf_counter() - t3
    m.timings["total"] = m.seconds_before + time.perf_counter() - t3
    cols = [data.attributes.index(a) for a in m.spec.heads]
    result = RunResult(
        run_id=m.spec.run_id,
        heads=m.spec.heads,
        best_epoch=m.best_epoch,
        val_acc=m.history[m.best_epoch - 1]["val_acc"],
        test_acc=dict(zip(m.spec.heads, test_hits.double().mean(0).tolist())),
        history=m.history,
        timings=m.timings,
        environment={
            "torch": torch.__version__,
            "device": str(device),
            "threads": str(torch.get_num_threads()),
            "input": pipe.describe(),
            "pack": f"{k} runs",
        },
        state_dict={n: v.detach().cpu().contiguous() for n, v in m.best_state.items()},
        correct={"val": m.best_val_correct.cpu(), "test": test_hits.cpu()},
        extra={
            "split_sizes": {name: len(split) for name, split in data.splits.items()},
            "label_corr": label_correlation(data.splits["train"].labels[:, cols]),
        },
    )
    if m.resumed_after:
        result.environment["resumed_after_epoch"] = str(m.resumed_after)
    return result

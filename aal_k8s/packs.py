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
(each member's ``Mode.loss``, as alone: its own heads and λ), so the fused C++/CUDA head operator
is used unchanged. The epoch loop (lr decay, validation, best epoch, checkpoints, the result) is
``train_run``'s own, ``aal_k8s.train.loop.run_epochs``: this module only says how a batch steps the
members (``_Fused``).

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
import functools
import hashlib
import json
from dataclasses import dataclass

import torch
from torch import nn

from aal_k8s.config import TrainConfig, config_from_dict
from aal_k8s.data import LoadedDataset
from aal_k8s.data.pipeline import pipeline_for_run
from aal_k8s.errors import AALError
from aal_k8s.model import AttributeNet
from aal_k8s.runspec import RunSpec
from aal_k8s.train import checkpoint
from aal_k8s.train.device import pick_device
from aal_k8s.train.loop import Run, RunCheckpointHook, RunEpochHook, finish, mode_of, run_epochs
from aal_k8s.train.progress import Progress, RunResult

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
class _Member(Run):
    """A run of the pack, with what it needs beside the loop's ``Run``."""

    cols: list[int]  # this member's label columns in the pack's label matrix
    rng: torch.Tensor  # the global RNG state after its init (what train_run's checkpoint records)
    shuffle: torch.Tensor | None = None  # the shuffle generator's state after its last epoch


PackEpochHook = RunEpochHook  # (run id, epoch, history entry)
PackCheckpointHook = RunCheckpointHook  # (run id, train_run's checkpoint state)


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
        epochs = sorted({m.p.epoch for m in members})
        behind = [m for m in members if m.p.epoch == epochs[0]]
        target = epochs[1] if len(epochs) > 1 else end
        if target > epochs[0]:
            _train(behind, pipe, t, device, target, on_epoch_end, on_checkpoint)
        if len(epochs) == 1:
            break
    if until_epoch and until_epoch < t.epochs:
        return []
    evaluate = functools.partial(_evaluate_alone, pipe, t.eval_batch_size, device)
    environment = {"input": pipe.describe(), "pack": f"{len(members)} runs"}
    return [finish(m, data, device, evaluate, environment) for m in members]


def _member(spec: RunSpec, data, pack_cols: list[int], device, state: dict | None) -> _Member:
    """The model and optimizer ``train_run`` builds for ``spec`` (same seed: same init)."""
    cfg = config_from_dict(spec.config)
    t, m = cfg.train, cfg.model
    torch.manual_seed(spec.seed)
    model = AttributeNet(m.backbone, m.pretrained, spec.heads).to(device, memory_format=torch.channels_last)
    fused_adam = True if device.type == "cuda" else None
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay,
                           fused=fused_adam)  # fmt: skip
    mode = mode_of(spec, device, t.heads_impl)
    cols = [pack_cols.index(data.attributes.index(a)) for a in spec.heads]
    if state is None:
        return _Member(spec, model, opt, mode, Progress(), cols, torch.get_rng_state())
    try:
        checkpoint.check(state, spec.run_id)
    except ValueError as e:
        raise AALError(f"run {spec.run_id}: {e}") from None
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    p = Progress.resumed(state, device)
    return _Member(spec, model, opt, mode, p, cols, state["rng"]["torch_cpu"], state["rng"]["shuffle"])


def _train(members: list[_Member], pipe, t: TrainConfig, device, end: int, on_epoch_end, on_checkpoint) -> None:
    """Train ``members`` (all after the same epoch) to epoch ``end`` through ``train_run``'s loop."""
    gen = torch.Generator().manual_seed(members[0].spec.seed)
    if members[0].p.epoch:
        gen.set_state(members[0].shuffle)  # the same for every member after the same epoch
    run_epochs(_Fused(members, gen, device, pipe, t), pipe, t, end, on_checkpoint, on_epoch_end)
    for m in members:
        m.shuffle = gen.get_state()


class _Fused:
    """``train.loop.Trainer`` of a pack: one fused backbone pass per batch feeds every member's
    heads and loss (its mode's, as alone); each member's Adam steps its own parameters. The
    packable modes have no per-step hooks (``before_step``/``after_step``) to call."""

    def __init__(self, members: list[_Member], gen: torch.Generator, device, pipe, t: TrainConfig):
        self.runs, self.gen, self.device, self.pipe, self.t = members, gen, device, pipe, t
        self.backbones = FusedBackbones([m.model.backbone for m in members])

    def train_mode(self) -> None:
        self.backbones.train()

    def step(self, x: torch.Tensor, y: torch.Tensor, steps_total: int) -> list[torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.pipe.bf16):
            hs = self.backbones(x)
        total = 0.0
        losses = []
        for m, h in zip(self.runs, hs):
            loss, mine = m.mode.loss(h, m.model, y[:, m.cols], m.mode.lam_at(m.p.step / steps_total))
            losses.append(loss.detach())
            total = total + mine
        for m in self.runs:
            m.opt.zero_grad(set_to_none=True)
        total.backward()  # members share no parameter: each gets exactly its own gradient
        for m in self.runs:
            m.opt.step()
            m.p.step += 1
        return losses

    def after_train(self) -> None:
        self.backbones.sync_buffers()

    def validate(self) -> list[tuple[list[float], torch.Tensor]]:
        hits = _evaluate(self.runs, self.backbones, self.pipe, "val", self.t.eval_batch_size, self.device)
        return [(h.double().mean(0).tolist(), h) for h in hits]

    def checkpoint(self, run: _Member, epoch: int, total: float) -> dict:
        """``train_run``'s checkpoint of the member, with the RNG states it would have alone: it
        resumes alone as well as in a pack."""
        rng = {"torch_cpu": run.rng, "torch_cuda": [], "shuffle": self.gen.get_state()}
        p = run.p
        return checkpoint.make_state(
            run.spec.run_id, epoch, run.model, run.opt, rng, p.best(), p.history, {**p.timings, "total": total}, p.step, run.mode.state_dict()
        )


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


def _evaluate_alone(pipe, batch_size: int, device, m: _Member, split: str) -> tuple[list[float], torch.Tensor]:
    """A member's per-head accuracy and correctness on ``split`` through its own model."""
    (hits,) = _evaluate([m], None, pipe, split, batch_size, device)
    return hits.double().mean(0).tolist(), hits

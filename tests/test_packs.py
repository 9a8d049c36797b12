"""Runs trained together as one horizontally fused pack (aal_k8s.packs): a member is bitwise the
run trained alone on CPU, its checkpoints resume alone or in any pack, and packs are formed and
named from their members only."""

from __future__ import annotations

import copy

import pytest
import torch

from aal_k8s.config import load_config
from aal_k8s.data import load_dataset
from aal_k8s.errors import AALError
from aal_k8s.model import AttributeNet
from aal_k8s.packs import FusedBackbones, group_packs, pack_id, train_pack
from aal_k8s.planner import plan_stage
from aal_k8s.train import train_run

LAMBDAS = "adversarial.lambdas=[0.1, 0.3, 1.0, 3.0]"


@pytest.fixture(autouse=True)
def one_thread():
    """Bitwise claims hold on one thread, as workers run with train.threads=1: with several, CPU
    kernels split their reductions by the operand's shape, and a pack's operands are 4x wider than
    a lone run's, so the last bits differ (as they do between two thread counts for one run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def four(tiny_overrides):
    """Square's four adversarial runs (one per λ): one pack."""
    cfg = load_config(overrides=[*tiny_overrides, LAMBDAS], dataset="synthetic")
    return load_dataset(cfg.dataset), plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])


def _same(a, b) -> None:
    """Two RunResults of one run are the same result (wall-clock seconds aside)."""
    drop = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert a.run_id == b.run_id and a.best_epoch == b.best_epoch
    assert drop(a.history) == drop(b.history)  # train losses and val accuracies per epoch, exactly
    assert a.val_acc == b.val_acc and a.test_acc == b.test_acc
    assert a.state_dict.keys() == b.state_dict.keys()
    for k in a.state_dict:  # weights, BN running statistics and counters
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    for split in ("val", "test"):
        assert torch.equal(a.correct[split], b.correct[split])
    assert a.extra == b.extra


def test_a_member_of_a_pack_of_4_is_bitwise_the_run_trained_alone(four):
    data, specs = four
    pack = train_pack(specs, data)
    assert [r.run_id for r in pack] == [s.run_id for s in specs]
    for i in (0, 3):  # first and last member: each its own λ, heads, optimizer, BN statistics
        _same(pack[i], train_run(specs[i], data))
    assert not torch.equal(pack[0].state_dict["head_weight"], pack[3].state_dict["head_weight"])


def test_member_checkpoints_resume_alone_and_a_crashed_pack_resumes_with_members_at_different_epochs(four):
    data, specs = four
    saved: dict[str, list[dict]] = {}
    train_pack(specs, data, on_checkpoint=lambda run_id, st: saved.setdefault(run_id, []).append(copy.deepcopy(st)),
               until_epoch=1)  # fmt: skip
    assert {r: [s["epoch"] for s in st] for r, st in saved.items()} == {s.run_id: [1] for s in specs}
    alone = train_run(specs[1], data)
    # a member's checkpoint is train_run's: it resumes alone to the uninterrupted run
    # (copies: the optimizer steps its loaded state in place, as train_run's does)
    _same(train_run(specs[1], data, resume_state=copy.deepcopy(saved[specs[1].run_id][0])), alone)
    # a pack that crashed after two members' epoch-1 checkpoints: those two wait, the others catch up
    resume = {s.run_id: copy.deepcopy(saved[s.run_id][0]) for s in specs[:2]}
    again = train_pack(specs, data, resume_states=resume)
    _same(again[1], alone)
    _same(again[3], train_run(specs[3], data))


def test_resnet18_in_a_pack_has_per_member_batch_norm_and_each_members_gradient():
    """ResNet18 (CelebA's backbone) fused: features and BN running statistics bitwise the member's
    own; the gradients within 1e-5 of their largest element, not bitwise: the weight gradient of
    the grouped 1x1 stride-2 downsample convolutions sums in another order in oneDNN (measured on
    CPU: 5e-7 relative, every other gradient bitwise equal)."""
    torch.manual_seed(0)
    nets = [AttributeNet("resnet18", "none", ["a"]).to(memory_format=torch.channels_last) for _ in range(2)]
    alone = [copy.deepcopy(n) for n in nets]
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    fused = FusedBackbones([n.backbone for n in nets])
    fused.train()
    hs = fused(x)
    sum(h.square().mean() for h in hs).backward()
    fused.sync_buffers()
    for net, ref, h in zip(nets, alone, hs):
        ref.train()
        want = ref.backbone(x)
        want.square().mean().backward()
        assert torch.equal(h, want)
        for (name, got), (_, exp) in zip(net.backbone.named_buffers(), ref.backbone.named_buffers()):
            assert torch.equal(got, exp), name  # running statistics: the member's own batches only
        for (name, got), (_, exp) in zip(net.backbone.named_parameters(), ref.backbone.named_parameters()):
            assert (got.grad - exp.grad).abs().max() <= 1e-5 * exp.grad.abs().max(), name
    assert not torch.equal(nets[0].backbone.bn1.running_mean, nets[1].backbone.bn1.running_mean)


def test_packs_group_runs_of_one_key_and_are_named_by_their_members(tiny_overrides):
    cfg = load_config(overrides=[*tiny_overrides, "adversarial.lambdas=[0.1, 0.3, 1.0, 3.0, 10.0]"], dataset="synthetic")
    adv = plan_stage("adversarial", cfg, {"square": "red_tint", "ring": "blue_tint"}, attributes=["square", "ring"])
    gan = plan_stage("gan", cfg, {"square": "red_tint"}, lambdas={"square": 0.5}, attributes=["square"])
    packs = group_packs([*adv, *gan], 4)
    assert sorted(len(p) for p in packs) == [1, 2, 4, 4]  # 10 λ runs in 4 + 4 + 2; the GAN run alone
    assert [s.run_id for s in packs[0]] == [gan[0].run_id]
    assert group_packs(adv, 1) == [[s] for s in adv]  # runs_per_job 1: today's one run per Job
    assert pack_id(adv[:4]) == pack_id(list(reversed(adv[:4]))) != pack_id(adv[1:5])
    assert pack_id(adv[:1]) == adv[0].run_id
    with pytest.raises(AALError, match="cannot train in one pack"):
        train_pack([adv[0], gan[0]], load_dataset(cfg.dataset))


# -- the worker running a pack ----------------------------------------------------------------------
def test_the_worker_runs_a_pack_through_a_rung_and_each_member_commits_as_the_run_alone(tmp_path, tiny_overrides):
    from aal_k8s import halving
    from aal_k8s.cli import main
    from aal_k8s.store import ExperimentStore, LocalStore
    from aal_k8s.worker import execute

    over = [o for o in tiny_overrides if not o.startswith("store.uri")]
    stores = {name: load_config(overrides=[*over, LAMBDAS, f"store.uri={tmp_path / name}"], dataset="synthetic")
              for name in ("pack", "alone")}  # fmt: skip
    cfg = stores["pack"]
    specs = plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])
    exps = {name: ExperimentStore(LocalStore(c.store.uri), c.experiment_name) for name, c in stores.items()}
    for exp in exps.values():
        for s in specs:
            exp.write_spec(s)
    exp = exps["pack"]
    runs = [x for s in specs for x in ("--run", s.run_id)]
    argv = ["worker", "--store", cfg.store.uri, "--experiment", exp.experiment, *runs]
    assert main([*argv, "--until-epoch", "1"]) == 0  # a halving rung: every member stops at epoch 1
    assert all(halving.read_rung(exp, s.run_id, 1)["epoch"] == 1 and not exp.is_committed(s.run_id) for s in specs)
    exp.commit_run(specs[2], {}, {"val_acc": {}, "test_acc": {}, "heads": specs[2].heads})  # done elsewhere: skipped
    assert main(argv) == 0
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    for i in (0, 3):
        s = specs[i]
        assert execute(stores["alone"].store.uri, exp.experiment, s.run_id) == 0
        a, b = exps["alone"].read_metrics(s.run_id), exp.read_metrics(s.run_id)
        assert exp.read_artifact(s.run_id, "best.safetensors") == exps["alone"].read_artifact(s.run_id, "best.safetensors")
        assert strip(a["history"]) == strip(b["history"]) and a["test_acc"] == b["test_acc"]
        assert b["environment"]["resumed_after_epoch"] == "1" and b["environment"]["pack"] == "3 runs"
        assert any(k.endswith("/worker.log") for k in exp.store.list(exp.key("runs", s.run_id, "attempts")))
    assert "pack" not in exps["pack"].read_metrics(specs[2].run_id).get("environment", {})  # left as it was


def test_a_members_worker_and_process_seconds_are_its_share_of_the_packs(tmp_path, tiny_overrides, monkeypatch):
    """Each member's record says what its run cost: the pack's wall time split over the members,
    as its train and eval seconds are; the whole pack's wall in every member's record made the
    plan and the live view count a pack of k k times over."""
    import time

    from aal_k8s.cli import main
    from aal_k8s.store import ExperimentStore, LocalStore

    cfg = load_config(overrides=[*tiny_overrides, LAMBDAS], dataset="synthetic")
    specs = plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])[:2]
    exp = ExperimentStore(LocalStore(cfg.store.uri), cfg.experiment_name)
    for s in specs:
        exp.write_spec(s)
    monkeypatch.setattr("aal_k8s.worker.process_seconds", lambda: 100.0)  # the pod's process, since its start
    t0 = time.perf_counter()
    assert main(["worker", "--store", cfg.store.uri, "--experiment", exp.experiment,
                 *[x for s in specs for x in ("--run", s.run_id)]]) == 0  # fmt: skip
    wall = time.perf_counter() - t0
    timings = [exp.read_metrics(s.run_id)["timings"] for s in specs]
    assert [t["process"] for t in timings] == [50.0, 50.0]
    assert sum(t["worker"] for t in timings) <= wall and all(t["worker"] > 0 for t in timings)


def test_the_local_backend_runs_a_pack_per_worker_process_and_one_run_per_process_by_default(tiny_overrides):
    from aal_k8s.backends.local import LocalBackend
    from aal_k8s.store import ExperimentStore, LocalStore

    cfg = load_config(overrides=[*tiny_overrides, LAMBDAS, "executor.runs_per_job=4"], dataset="synthetic")
    specs = plan_stage("adversarial", cfg, {"square": "red_tint"}, attributes=["square"])
    exp = ExperimentStore(LocalStore(cfg.store.uri), cfg.experiment_name)
    backend = LocalBackend(cfg, progress=False)
    one = LocalBackend(load_config(overrides=tiny_overrides, dataset="synthetic"), progress=False)
    assert one.worker_command([specs[0]], exp)[-2:] == ["--run", specs[0].run_id]  # runs_per_job 1: as before
    report = backend.submit(specs, exp)
    assert not report.failed and sorted(report.submitted) == sorted(s.run_id for s in specs)
    for s in specs:
        assert exp.is_committed(s.run_id) and exp.read_metrics(s.run_id)["environment"]["pack"] == "4 runs"
        log = exp.store.get_bytes(exp.run_key(s.run_id, "local.log")).decode()
        assert log.count("(pack of 4)") == 4  # one worker process trained the four

import torch

from aal_k8s.data import load_dataset
from aal_k8s.planner import plan_stage
from aal_k8s.train import lr_at, train_run


def test_lr_is_divided_from_the_decay_epoch_on():
    assert [lr_at(e, 1e-4, 4, 10.0) for e in range(1, 7)] == [1e-4] * 3 + [1e-5] * 3


def test_a_seeded_cpu_run_is_bitwise_deterministic(tiny_cfg):
    data = load_dataset(tiny_cfg.dataset)
    spec = plan_stage("pairwise", tiny_cfg)[0]
    a, b = train_run(spec, data), train_run(spec, data)
    assert a.metrics()["history"][0]["train_loss"] == b.metrics()["history"][0]["train_loss"]
    assert a.val_acc == b.val_acc and a.test_acc == b.test_acc and a.best_epoch == b.best_epoch
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k


def test_adversarial_run_reports_every_head_at_the_best_epoch(tiny_cfg):
    data = load_dataset(tiny_cfg.dataset)
    spec = plan_stage("adversarial", tiny_cfg, {"square": "red_tint"})[0]
    r = train_run(spec, data)
    assert set(r.val_acc) == set(r.test_acc) == {"square", "red_tint"}
    assert len(r.history) == tiny_cfg.train.epochs
    best = max(range(len(r.history)), key=lambda i: (r.history[i]["val_acc"]["square"], -i))
    assert r.best_epoch == best + 1  # selected on the primary head only, earliest on ties
    assert r.val_acc == r.history[best]["val_acc"]
    assert {"train", "eval", "total"} <= set(r.timings)
    assert r.state_dict["head_weight"].shape[0] == 2


# -- ablation modes ------------------------------------------------------------------------------
import pytest  # noqa: E402

from aal_k8s.stages import ABLATION_STAGES  # noqa: E402

PARTNERS = {"square": "red_tint"}
LAMBDAS = {"square": 0.5}


@pytest.mark.parametrize("stage", ABLATION_STAGES)
def test_each_ablation_stage_trains_on_the_synthetic_dataset(tiny_cfg, stage):
    data = load_dataset(tiny_cfg.dataset)
    init = None
    if stage == "shared":
        init = train_run(plan_stage("multi", tiny_cfg)[0], data).state_dict
    (spec,) = plan_stage(stage, tiny_cfg, PARTNERS, lambdas=LAMBDAS, groups={"square": ["ring", "red_tint"]})
    r = train_run(spec, data, init_state=init)
    assert set(r.val_acc) == set(spec.heads) and 0.0 <= r.val_acc["square"] <= 1.0
    assert all(v == v for e in r.history for v in e["train_loss"].values())  # no NaN
    if stage == "wgan":  # the critic stays clipped
        assert r.state_dict["head_weight"][1].abs().max() <= spec.options["clip"]
    if stage == "shared":  # the CNN is the multi run's, untouched; hidden layers trained
        for k, v in init.items():
            if k.startswith("backbone."):
                assert torch.equal(r.state_dict[k], v), k
        assert any(k.startswith("hidden.") for k in r.state_dict)


def test_shared_stage_without_the_multi_weights_is_an_error(tiny_cfg):
    from aal_k8s.errors import AALError

    (spec,) = plan_stage("shared", tiny_cfg, PARTNERS, lambdas=LAMBDAS)
    with pytest.raises(AALError, match="starts from the weights of run mul-"):
        train_run(spec, load_dataset(tiny_cfg.dataset))


def test_dann_schedule_changes_training_only_through_lambda(tiny_overrides):
    from aal_k8s.config import load_config
    from aal_k8s.objectives import dann_lambda

    data, steps = None, {}
    for schedule in ("constant", "dann"):
        cfg = load_config(overrides=[*tiny_overrides, f"adversarial.lambda_schedule={schedule}"], dataset="synthetic")
        data = data or load_dataset(cfg.dataset)
        spec = plan_stage("adversarial", cfg, PARTNERS)[0]
        steps[schedule] = [_step(spec, data, at=k) for k in (0, 1)]
    lam, n_p, total_steps = spec.lam, len(spec.primary), cfg.train.epochs * 3  # 96 images / 32 a batch
    assert lam > 0
    # the heads' gradients never depend on lambda: on the first update (same weights, same batch)
    # they are the same under both schedules
    for name in ("head_weight", "head_bias"):
        assert torch.equal(steps["constant"][0].grads[name], steps["dann"][0].grads[name]), name
    # the features' gradient follows lambda_k = dann(lam, k / T) at update k (0 at the first)...
    for k in (0, 1):
        lam_k = dann_lambda(lam, k / total_steps, cfg.adversarial.dann_alpha)
        _assert_grads(steps["dann"][k], _expected_grads("adversarial", steps["dann"][k], n_p, lam_k))
    assert dann_lambda(lam, 0.0) == 0.0
    # ... and the constant schedule's follows lam
    _assert_grads(steps["constant"][1], _expected_grads("adversarial", steps["constant"][1], n_p, lam))


def test_runs_record_split_sizes_and_train_label_correlation(tiny_cfg):
    data = load_dataset(tiny_cfg.dataset)
    r = train_run(plan_stage("pairwise", tiny_cfg)[0], data)
    m = r.metrics()
    assert m["split_sizes"] == {"train": 96, "val": 64, "test": 64}
    r01 = torch.corrcoef(data.splits["train"].labels[:, :2].t().double())[0, 1].item()
    assert m["label_corr"][0][0] == 1.0 and abs(m["label_corr"][0][1] - r01) < 1e-12


# -- the affinity stage ---------------------------------------------------------------------------
def test_affinity_measurements_leave_the_multi_task_trajectory_bitwise_unchanged(tiny_overrides):
    from aal_k8s.config import load_config

    cfg = load_config(overrides=[*tiny_overrides, "affinity.every=1"], dataset="synthetic")
    data = load_dataset(cfg.dataset)
    multi = train_run(plan_stage("multi", cfg)[0], data)
    aff = train_run(plan_stage("affinity", cfg)[0], data)
    for k in multi.state_dict:
        assert torch.equal(multi.state_dict[k], aff.state_dict[k]), k
    assert multi.val_acc == aff.val_acc
    z = aff.metrics()["affinity"]
    assert z["tasks"] == aff.heads and len(z["z"]) == 6 and all(len(row) == 6 for row in z["z"])
    assert z["measurements"] == cfg.train.epochs * 3  # 96 images / 32 per batch, every step
    assert 0 < aff.timings["affinity"] < aff.timings["train"]


@pytest.mark.parametrize("measure_on", ["val", "train"])
def test_an_interrupted_affinity_run_resumes_to_the_same_matrix(tiny_overrides, measure_on):
    from aal_k8s.config import load_config

    cfg = load_config(overrides=[*tiny_overrides, "affinity.every=2", f"affinity.measure_on={measure_on}"], dataset="synthetic")
    data = load_dataset(cfg.dataset)
    (spec,) = plan_stage("affinity", cfg)
    states = []
    whole = train_run(spec, data, on_checkpoint=lambda st: states.append(torch.load(_roundtrip(st), weights_only=True)))
    resumed = train_run(spec, data, resume_state=states[0])
    assert resumed.metrics()["affinity"]["z"] == whole.metrics()["affinity"]["z"]
    assert resumed.metrics()["affinity"]["measurements"] == whole.metrics()["affinity"]["measurements"]


def _roundtrip(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


# -- what each mode optimises, and the learning rate it does it at --------------------------------
import copy  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch.nn.functional as F  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_pre_hook  # noqa: E402


@dataclass
class Step:
    model: torch.nn.Module  # as it was before the update
    x: torch.Tensor
    y: torch.Tensor
    grads: dict[str, torch.Tensor]  # the gradients the update used, by parameter name


class _Stop(Exception):
    pass


def _step(spec, data, at: int = 0, init_state=None) -> Step:
    """Run ``train_run(spec)`` up to its update number ``at`` (0-based) and return that update's
    model, batch and gradients; training stops there."""
    from aal_k8s.train import loop

    seen: dict = {"batches": [], "updates": 0}
    real_pipeline, real_net = loop.pipeline_for_run, loop.AttributeNet

    def recording_pipeline(*args, **kwargs):
        pipe = real_pipeline(*args, **kwargs)
        train_batches = pipe.train_batches

        def recorded(*a, **k):
            for x, y in train_batches(*a, **k):
                seen["batches"].append((x.clone(), y.clone()))
                yield x, y

        pipe.train_batches = recorded
        return pipe

    def recording_net(*args, **kwargs):
        seen["model"] = real_net(*args, **kwargs)
        return seen["model"]

    def before_update(opt, args, kwargs):
        if seen["updates"] == at:
            model = seen["model"]
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            x, y = seen["batches"][at]
            seen["step"] = Step(copy.deepcopy(model), x, y, grads)
            raise _Stop
        seen["updates"] += 1

    handle = register_optimizer_step_pre_hook(before_update)
    try:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(_Stop):
            mp.setattr(loop, "pipeline_for_run", recording_pipeline)
            mp.setattr(loop, "AttributeNet", recording_net)
            train_run(spec, data, init_state=init_state)
    finally:
        handle.remove()
    return seen["step"]


def _expected_grads(mode: str, step: Step, n_p: int, lam: float) -> dict[str, torch.Tensor]:
    """The gradients of each player's objective, written out with plain autograd (paper eq. 4-6 and
    the WGAN critic), on the model and batch of ``step``."""
    net = copy.deepcopy(step.model)
    net.zero_grad(set_to_none=True)
    y = step.y
    h = net.features(step.x)
    W, b = net.head_weight, net.head_bias
    z = h @ W.t() + b
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(0)  # [K]
    primary = bce[:n_p].mean()
    feature_params = {n: p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("head_")}
    if mode in ("single", "multi", "affinity"):
        features_obj = heads_obj = primary
    elif mode in ("adversarial", "shared"):  # gradient reversal: features fight the auxiliary heads
        features_obj = primary - lam * bce[n_p:].mean()
        heads_obj = primary + bce[n_p:].mean()
    elif mode == "gan":  # features fool the frozen auxiliary heads (flipped labels)
        z_aux = h @ W[n_p:].detach().t() + b[n_p:].detach()
        features_obj = primary + lam * F.binary_cross_entropy_with_logits(z_aux, 1.0 - y[:, n_p:])
        heads_obj = primary + bce[n_p:].mean()
    elif mode == "wgan":  # linear critics estimate the gap between the y=1 and y=0 features

        def gap(f):
            pos = y[:, n_p:] > 0.5
            return torch.stack([f[pos[:, j], j].mean() - f[~pos[:, j], j].mean() for j in range(f.shape[1])]).mean()

        features_obj = primary + lam * gap(h @ W[n_p:].detach().t() + b[n_p:].detach())
        heads_obj = primary - gap(h.detach() @ W[n_p:].t() + b[n_p:])
    else:
        raise ValueError(mode)
    names = list(feature_params)
    out = dict(zip(names, torch.autograd.grad(features_obj, [feature_params[n] for n in names], retain_graph=True)))
    gw, gb = torch.autograd.grad(heads_obj, [W, b])
    out["head_weight"], out["head_bias"] = gw, gb
    return out


def _assert_grads(step: Step, want: dict[str, torch.Tensor]) -> None:
    assert set(step.grads) == set(want)
    for name, g in want.items():
        torch.testing.assert_close(step.grads[name], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("stage", ["single", "multi", "pairwise", "affinity", "adversarial", *ABLATION_STAGES])
def test_each_stage_trains_its_modes_objective(tiny_cfg, stage):
    data = load_dataset(tiny_cfg.dataset)
    spec = plan_stage(stage, tiny_cfg, PARTNERS, lambdas=LAMBDAS, groups={"square": ["ring", "red_tint"]})[0]
    init = None
    if spec.init_from:  # the shared ablation's frozen CNN: any weights of the right shapes will do
        from aal_k8s.model import AttributeNet

        init = AttributeNet(tiny_cfg.model.backbone, "none", spec.heads).state_dict()
    n_p = len(spec.primary)
    if spec.mode in ("adversarial", "gan", "wgan", "shared"):
        assert spec.auxiliary and spec.lam > 0
    step = _step(spec, data, init_state=init)
    want = _expected_grads(spec.mode, step, n_p, spec.lam if spec.auxiliary else 0.0)
    _assert_grads(step, want)
    if spec.mode == "shared":
        assert not any(n.startswith("backbone.") for n in step.grads)  # frozen


def test_the_optimizer_runs_each_epoch_at_the_decayed_learning_rate_and_the_decay_matters(tiny_overrides):
    from aal_k8s.config import load_config

    def run(factor):
        over = [*tiny_overrides, "train.epochs=3", "train.lr=0.001", "train.lr_decay_epoch=2",
                f"train.lr_decay_factor={factor}"]  # fmt: skip
        cfg = load_config(overrides=over, dataset="synthetic")
        lrs, weights = [], []

        def keep(state):  # what the optimizer really used, not what the history says
            lrs.append([g["lr"] for g in state["optimizer"]["param_groups"]])
            weights.append({k: v.clone() for k, v in state["model"].items() if v.is_floating_point()})

        train_run(plan_stage("single", cfg)[0], load_dataset(cfg.dataset), on_checkpoint=keep)
        return lrs, weights

    lrs, decayed = run(10.0)
    assert lrs == [[1e-3], [1e-4], [1e-4]]
    _, plain = run(1.0)
    # epoch 1 is the same; epoch 2's update is about a tenth of the undecayed one (Adam's step
    # scales with the learning rate)
    params = [k for k in decayed[0] if "running" not in k]
    assert all(torch.equal(decayed[0][k], plain[0][k]) for k in params)
    def moved(w):  # how far epoch 2 took the parameters
        return sum(float((w[1][k] - w[0][k]).norm()) for k in params)

    assert 0.05 < moved(decayed) / moved(plain) < 0.2, (moved(decayed), moved(plain))

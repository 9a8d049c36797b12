import torch

from aal_k8s.data import load_dataset
from aal_k8s.planner import plan_stage
from aal_k8s.trainer import lr_at, train_run


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

from aal_k8s.runspec import ABLATION_STAGES  # noqa: E402

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

    data = None
    results = {}
    for schedule in ("constant", "dann"):
        cfg = load_config(overrides=[*tiny_overrides, f"adversarial.lambda_schedule={schedule}"], dataset="synthetic")
        data = data or load_dataset(cfg.dataset)
        results[schedule] = train_run(plan_stage("adversarial", cfg, PARTNERS)[0], data)
    # the auxiliary head sees no schedule (it always minimises its own BCE); the first step has
    # lambda_p = 0 under dann, so the backbone differs from the constant run's
    a, b = results["constant"].state_dict, results["dann"].state_dict
    assert not torch.equal(a["backbone.body.0.weight"], b["backbone.body.0.weight"])


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

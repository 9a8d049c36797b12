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

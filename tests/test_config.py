import pytest

from aal_k8s.config import PAPER_LAMBDAS, Config, load_config, parse_overrides
from aal_k8s.errors import ConfigError


def test_defaults_are_the_papers_protocol():
    cfg = Config()
    assert cfg.model.backbone == "resnet18" and cfg.model.pretrained == "imagenet"
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 5e-4
    assert cfg.train.epochs == 6 and cfg.train.lr_decay_epoch == 4 and cfg.train.lr_decay_factor == 10
    assert cfg.adversarial.lambdas == PAPER_LAMBDAS == [0.01, 0.1, 0.3, 0.5, 1.0]


def test_synthetic_preset_uses_the_small_cnn_offline():
    cfg = load_config(dataset="synthetic")
    assert cfg.model.backbone == "small_cnn" and cfg.model.pretrained == "none"
    assert cfg.experiment_name == "synthetic"


def test_yaml_file_and_overrides_apply_in_order(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("train:\n  epochs: 3\n  lr: 0.01\nadversarial:\n  lambdas: [0.1, 1]\n")
    cfg = load_config(f, ["train.epochs=2"], dataset="synthetic")
    assert cfg.train.epochs == 2  # --set wins over the file
    assert cfg.train.lr == 0.01  # the file wins over the preset
    assert cfg.adversarial.lambdas == [0.1, 1.0]  # ints widen to float


def test_override_values_parse_as_yaml():
    assert parse_overrides(["a.b=2", "a.c=[0.1, 1]", "d=none", "e=null"]) == {
        "a": {"b": 2, "c": [0.1, 1]},
        "d": "none",
        "e": None,
    }


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epoch=3", "train.epoch: unknown key"),
        ("bogus=1", "bogus: unknown key"),
        ("train.epochs=two", "train.epochs: expected an integer"),
        ("train.epochs=0", "train.epochs: must be > 0"),
        ("train.lr=-1", "train.lr: must be > 0"),
        ("train.heads_impl=magic", "train.heads_impl: 'magic' is not one of"),
        ("adversarial.lambdas=0.1", "adversarial.lambdas: expected a list"),
        ("adversarial.lambdas=[]", "adversarial.lambdas: must list at least one value"),
        ("adversarial.lambdas=[0.1, 0.1]", "adversarial.lambdas: values must be distinct"),
        ("dataset.synthetic.label_noise=1.5", "dataset.synthetic.label_noise: must be within [0, 1]"),
        ("model.pretrained=/no/such/file.pt", "model.pretrained: '/no/such/file.pt' is neither"),
        ("experiment=a/b", "experiment: 'a/b' may only hold"),
        ("train=3", "train: expected a mapping"),
        ("train.epochs", "expected KEY=VALUE"),
    ],
)
def test_bad_values_name_their_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override], dataset="synthetic")
    assert fragment in str(e.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.epochs=0", "train.lr=x", "nope.x=1"], dataset="synthetic")
    assert len(e.value.problems) == 3
    text = str(e.value)
    assert "train.epochs" in text and "train.lr" in text and "nope" in text


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "bad.yaml" in str(e.value) and "not valid YAML at line" in str(e.value)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_dataset_is_an_error():
    with pytest.raises(ConfigError, match="dataset.name: 'mnist' is not one of"):
        load_config(dataset="mnist")

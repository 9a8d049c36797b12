"""Experiment configuration: YAML mapped onto typed dataclasses, validated all at once.

Every default lives here, with a comment. The paper's protocol (section 4.1) is the default;
``DATASET_PRESETS`` holds the few values a dataset changes (the synthetic dataset trains a small
CNN from scratch, which needs a larger learning rate than a pretrained ResNet18).

Precedence, lowest first: dataclass defaults, the dataset preset, the YAML file, ``--set`` overrides.
Unknown keys, wrong types and impossible values raise one ``ConfigError`` listing every problem.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aal_k8s.errors import ConfigError

PAPER_LAMBDAS = [0.01, 0.1, 0.3, 0.5, 1.0]


@dataclass
class SyntheticConfig:
    n_train: int = 3000  # training images; planted correlations live only here
    n_val: int = 1000  # validation images (attributes independent)
    n_test: int = 2000  # test images (attributes independent)
    image_size: int = 32  # square RGB images
    label_noise: float = 0.15  # fraction of flipped train labels on each planted attribute a
    agreement: float = 0.9  # P(b's train label == a's train label) for each planted pair (a, b)


@dataclass
class DatasetConfig:
    name: str = "synthetic"  # synthetic | celeba | duke
    root: str | None = None  # folder with the dataset's official layout (real datasets only)
    seed: int = 0  # seeds the synthetic generator and any split the loader carves
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # resnet18 (the paper) | small_cnn (seconds per run on a CPU)
    pretrained: str = "imagenet"  # imagenet (torchvision weights if cached) | none | path to a state dict
    image_size: int = 224  # input side length fed to the backbone (real datasets)


@dataclass
class TrainConfig:
    lr: float = 1e-4  # Adam learning rate (paper 4.1)
    weight_decay: float = 5e-4  # Adam weight decay (paper 4.1)
    epochs: int = 6  # paper 4.1
    lr_decay_epoch: int = 4  # 1-based epoch from which the lr is divided by lr_decay_factor
    lr_decay_factor: float = 10.0  # paper: "dividing the learning rate by a factor of 10 at epoch 4"
    batch_size: int = 64  # not stated in the paper
    eval_batch_size: int = 512  # evaluation only; does not change results
    seed: int = 0  # model init, data order and augmentation
    heads_impl: str = "auto"  # auto | fused | reference (see aal_k8s.heads)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    threads: int = 0  # torch intra-op threads per run; 0 = cores / parallel runs


@dataclass
class AdversarialConfig:
    lambdas: list[float] = field(default_factory=lambda: list(PAPER_LAMBDAS))  # grid, chosen on val
    final_selection: str = "best_on_val"  # best_on_val (single or adversarial) | adversarial (paper)


@dataclass
class StoreConfig:
    uri: str = "aal-runs"  # local folder, file:///path, or s3://bucket/prefix


@dataclass
class ExecutorConfig:
    backend: str = "local"  # local (processes on this machine) | k8s
    parallel: int = 0  # concurrent local runs; 0 = number of CPU cores (1 per GPU when on CUDA)


@dataclass
class Config:
    experiment: str = ""  # store prefix of this experiment; "" = the dataset name
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.dataset.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DATASET_PRESETS: dict[str, dict[str, Any]] = {
    # A 4-layer CNN from scratch on 32x32 images: lr 1e-4 would need many more epochs.
    "synthetic": {
        "model": {"backbone": "small_cnn", "pretrained": "none", "image_size": 32},
        "train": {"lr": 2e-3, "batch_size": 64},
    },
    "celeba": {},
    "duke": {},
}

CHOICES = {
    "dataset.name": tuple(DATASET_PRESETS),
    "model.backbone": ("resnet18", "small_cnn"),
    "train.heads_impl": ("auto", "fused", "reference"),
    "train.device": ("auto", "cpu", "cuda"),
    "adversarial.final_selection": ("best_on_val", "adversarial"),
    "executor.backend": ("local", "k8s"),
}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, key: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, problems)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
            return value
        return [_coerce(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _merge(obj, data: Any, prefix: str, problems: list[str]) -> None:
    """Apply a nested mapping onto dataclass ``obj`` in place, recording every problem."""
    if not isinstance(data, dict):
        problems.append(f"{prefix or 'config'}: expected a mapping, got {data!r}")
        return
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            known = ", ".join(sorted(names))
            problems.append(f"{key}: unknown key (known here: {known})")
            continue
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            _merge(current, v, key, problems)
        else:
            setattr(obj, k, _coerce(v, hints[k], key, problems))


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError([f"{dotted}: cannot set inside non-mapping {p!r}"])
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """``["train.epochs=2", "adversarial.lambdas=[0.1, 1]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    problems = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected KEY=VALUE")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key.strip(), value)
    if problems:
        raise ConfigError(problems)
    return out


def validate(cfg: Config) -> list[str]:
    """Every impossible value in ``cfg``, each naming its key; empty when the config is usable."""
    problems: list[str] = []
    for dotted, allowed in CHOICES.items():
        section, _, name = dotted.partition(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            problems.append(f"{dotted}: {value!r} is not one of {', '.join(allowed)}")
    t, s = cfg.train, cfg.dataset.synthetic
    positive = {
        "train.lr": t.lr,
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.eval_batch_size": t.eval_batch_size,
        "train.lr_decay_factor": t.lr_decay_factor,
        "dataset.synthetic.n_train": s.n_train,
        "dataset.synthetic.n_val": s.n_val,
        "dataset.synthetic.n_test": s.n_test,
        "model.image_size": cfg.model.image_size,
    }
    for key, value in positive.items():
        if isinstance(value, (int, float)) and not value > 0:
            problems.append(f"{key}: must be > 0, got {value}")
    if isinstance(t.weight_decay, float) and t.weight_decay < 0:
        problems.append(f"train.weight_decay: must be >= 0, got {t.weight_decay}")
    if isinstance(t.lr_decay_epoch, int) and t.lr_decay_epoch < 1:
        problems.append(f"train.lr_decay_epoch: must be >= 1, got {t.lr_decay_epoch}")
    if isinstance(t.threads, int) and t.threads < 0:
        problems.append(f"train.threads: must be >= 0, got {t.threads}")
    if isinstance(cfg.executor.parallel, int) and cfg.executor.parallel < 0:
        problems.append(f"executor.parallel: must be >= 0, got {cfg.executor.parallel}")
    lams = cfg.adversarial.lambdas
    if isinstance(lams, list):
        if not lams:
            problems.append("adversarial.lambdas: must list at least one value")
        if any(isinstance(x, float) and not x > 0 for x in lams):
            problems.append(f"adversarial.lambdas: every value must be > 0, got {lams}")
        if len(set(lams)) != len(lams):
            problems.append(f"adversarial.lambdas: values must be distinct, got {lams}")
    if isinstance(s.image_size, int) and s.image_size < 16:
        problems.append(f"dataset.synthetic.image_size: must be >= 16, got {s.image_size}")
    for key, value in (("label_noise", s.label_noise), ("agreement", s.agreement)):
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            problems.append(f"dataset.synthetic.{key}: must be within [0, 1], got {value}")
    name = cfg.experiment_name
    if isinstance(name, str) and (not name or not all(c.isalnum() or c in "-_." for c in name)):
        problems.append(f"experiment: {name!r} may only hold letters, digits, '-', '_' and '.'")
    pre = cfg.model.pretrained
    if pre not in ("imagenet", "none") and isinstance(pre, str) and not os.path.isfile(pre):
        problems.append(f"model.pretrained: {pre!r} is neither imagenet, none nor an existing file")
    return problems


def _new_keys(reported: list[str], more: list[str]) -> list[str]:
    """``more`` minus problems about keys already reported (a wrong type makes range checks moot)."""
    seen = {p.split(":")[0].split("[")[0] for p in reported}
    return [p for p in more if p.split(":")[0] not in seen]


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    dataset: str | None = None,
) -> Config:
    """Build the experiment config: defaults < dataset preset < YAML file < ``--set`` overrides.

    ``dataset`` (the CLI's ``--dataset``) picks the preset and wins over the file's dataset.name.
    """
    problems: list[str] = []
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"config file {str(p)!r} does not exist"])
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError([f"config file {str(p)!r} is not valid YAML{where}"]) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError([f"config file {str(p)!r}: top level must be a mapping"])
        data = loaded or {}
    over = parse_overrides(overrides or [])
    if dataset is not None:
        _set_dotted(over, "dataset.name", dataset)

    name = over.get("dataset", {}).get("name") or (data.get("dataset") or {}).get("name") or "synthetic"
    cfg = Config()
    preset = DATASET_PRESETS.get(name) if isinstance(name, str) else None
    if preset:
        _merge(cfg, preset, "", problems)
    _merge(cfg, data, "", problems)
    _merge(cfg, over, "", problems)
    problems += _new_keys(problems, validate(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def config_from_dict(data: dict) -> Config:
    """Rebuild a validated Config from ``Config.to_dict()`` output (e.g. inside a RunSpec)."""
    cfg = Config()
    problems: list[str] = []
    _merge(cfg, data, "", problems)
    problems += _new_keys(problems, validate(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg

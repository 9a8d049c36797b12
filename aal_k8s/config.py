"""Experiment configuration: YAML mapped onto typed dataclasses, validated all at once.

Every default lives here, with a comment. The paper's protocol (section 4.1) is the default;
``DATASET_PRESETS`` holds the few values a dataset changes (the synthetic dataset trains a small
CNN from scratch, which needs a larger learning rate than a pretrained ResNet18).

Precedence, lowest first: dataclass defaults, the dataset preset, the YAML file, ``--set`` overrides.
Unknown keys, wrong types and impossible values raise one ``ConfigError`` listing every problem.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aal_k8s.errors import ConfigError
from aal_k8s.partners import PARTNER_METHODS
from aal_k8s.rates import DEVICE_RATES

PAPER_LAMBDAS = [0.01, 0.1, 0.3, 0.5, 1.0]


@dataclass
class SyntheticConfig:
    n_train: int = 3000  # training images; planted correlations live only here
    n_val: int = 1000  # validation images (attributes independent)
    n_test: int = 2000  # test images (attributes independent)
    image_size: int = 32  # square RGB images
    label_noise: float = 0.15  # fraction of flipped train labels on each planted attribute a
    agreement: float = 0.95  # P(b's train label == a's train label) for each planted pair (a, b)


@dataclass
class AugmentConfig:
    # Train batches of real datasets only (the synthetic data is never augmented); see
    # aal_k8s.data.pipeline. Validation and test images are resized whole, never cropped or flipped.
    crop: float = 0.9  # random crop whose sides are this fraction of the image's, then resized (1 = none)
    flip: bool = True  # random horizontal flip


#: Set in each Kubernetes pod to where it puts the pack when dataset.pack_to is auto
#: (aal_k8s.backends.k8s_manifests.pack_destination; read by aal_k8s.data.pack).
PACK_TO_ENV = "AAL_K8S_PACK_TO"


def pod_pack_destination(cfg: "Config") -> str:
    """Where a Kubernetes pod puts the dataset pack: ``dataset.pack_to``, or with auto on disk when
    a cache volume is mounted (shared: fetched once per node or cluster), else in memory, streamed
    from the store (aal_k8s.data.pack.stream). Memory is the default because it needs nothing the
    cluster may not have: no hostPath (refused by the restricted Pod Security profile), no
    ReadWriteMany volume, no pack-sized node disk per pod; the pipeline holds the splits in memory
    anyway. Here, not in the backend: the plan (aal_k8s.cost) sizes the same pods."""
    if cfg.dataset.pack_to != "auto":
        return cfg.dataset.pack_to
    return "disk" if cfg.k8s.cache_host_path or cfg.k8s.cache_volume_claim else "memory"


@dataclass
class DatasetConfig:
    name: str = "synthetic"  # one of DATASET_PRESETS
    root: str | None = None  # folder with the dataset's official layout (real datasets only)
    seed: int = 0  # seeds the synthetic generator and any split the loader carves
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # -- real datasets (docs/datasets.md) ---------------------------------------------------------
    pack: str = "auto"  # auto: the store's packs/<name>/ if prepared, else decode from root | none | a pack's folder or URI
    cache_dir: str = ""  # local folder packs are downloaded to; "" = $AAL_K8S_CACHE or ~/.cache/aal-k8s
    # where a worker puts the pack: disk (cache_dir, memory-mapped, one download per machine or
    # shared cache) | memory (streamed from the store into RAM, verified shard by shard; nothing on
    # disk) | auto: $AAL_K8S_PACK_TO (a k8s Job sets it: memory unless a cache volume is mounted), else disk
    pack_to: str = "auto"
    val_fraction: float = 0.1  # duke: share of train identities held out as validation (seeded by seed)
    strict_counts: bool = True  # require the official image counts; false accepts a subset
    workers: int = 4  # decode processes (DataLoader workers) when training from unpacked image files
    augment: AugmentConfig = field(default_factory=AugmentConfig)


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
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False  # torch.compile the model (first epoch pays the compile time)


@dataclass
class AdversarialConfig:
    lambdas: list[float] = field(default_factory=lambda: list(PAPER_LAMBDAS))  # grid, chosen on val
    final_selection: str = "best_on_val"  # best_on_val (single or adversarial) | adversarial (paper)
    partners_from: str = "pairwise"  # pairwise (paper: the pairwise matrix) | affinity (the affinity stage) | correlation (train labels)
    lambda_schedule: str = "constant"  # constant (paper) | dann: lambda_p = 2*lambda/(1+exp(-alpha*p)) - lambda over progress p
    dann_alpha: float = 10.0  # alpha of the dann schedule (Ganin & Lempitsky use 10)
    wgan_clip: float = 0.01  # wgan stage: the critic's weights are clipped to [-c, c] after every step (WGAN)
    shared_hidden_layers: int = 2  # shared stage: hidden layers on the frozen multi-task CNN (paper: two)
    # Pairwise partners: the paper takes any drop above zero, which on small validation sets can be
    # one image. none (paper) | mcnemar: the drop must also be significant in McNemar's exact test
    # on the validation images a gets right alone but wrong with b, and vice versa (p < 0.05).
    partner_test: str = "none"
    min_drop: float = 0.0  # pairwise partners: a's val accuracy must drop by more than this (0.005 = 0.5 points)
    # grid (paper): every lambda trains all epochs. halving: successive halving (ASHA/Hyperband's
    # rule, aal_k8s.halving): all lambdas train to the first rung, the best 1/eta on validation go on
    # from their rung checkpoint, until the last survivors reach train.epochs.
    lambda_search: str = "grid"
    halving_eta: int = 3  # halving: keep the best floor(n/eta) (at least 1) at every rung
    halving_rungs: list[int] = field(default_factory=list)  # epochs of the rungs; [] = Hyperband's geometric ones
    # the final comparison over N seeds (stage "seeds", --seeds N): the final classifiers and the
    # single-task baselines trained with N-1 more seeds; the report gives a mean and an interval
    seeds: int = 1


@dataclass
class AffinityConfig:
    # The affinity stage (lookahead inter-task affinity, Fifty et al. 2021) over all attributes.
    every: int = 0  # measure every k training steps; 0 = every 2*M steps (adds about half a run)
    window: int = 0  # average the last N measurements; 0 = all of training
    # val: losses before/after each lookahead on a validation batch; train: on the step's own batch
    # (Fifty et al.). A partner that is spuriously predictive in train looks helpful on train
    # batches, so only val finds the synthetic planted partners (README, "Finding partners").
    measure_on: str = "val"


@dataclass
class StoreConfig:
    uri: str = "aal-runs"  # local folder, file:///path, or s3://bucket/prefix
    # -- S3-compatible stores (AWS, MinIO, Ceph RGW, GCS interop); ignored by local folders.
    # Credentials are never config: they come from the environment (AWS_ACCESS_KEY_ID/...),
    # a mounted Secret, a shared credentials file or the instance/pod role (see docs/store.md).
    endpoint_url: str = ""  # "" = AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL env, else AWS itself
    region: str = ""  # "" = AWS_REGION / AWS_DEFAULT_REGION env, else us-east-1
    addressing_style: str = "auto"  # auto | path (MinIO, Ceph, most on-prem) | virtual
    retry_mode: str = "standard"  # standard | adaptive (client-side rate limiting on throttling)
    max_attempts: int = 5  # attempts per request, the first included: 5xx/throttling/resets retried
    connect_timeout: float = 10.0  # seconds to open a connection
    read_timeout: float = 60.0  # seconds without a byte before a read fails (and is retried)
    multipart_threshold_mb: int = 64  # objects from this size on go up/down in parts (S3 min: 5)
    multipart_chunksize_mb: int = 16  # part size of multipart transfers (S3 min: 5)
    transfer_concurrency: int = 4  # parallel part transfers of one large object
    # required: refuse a server that ignores create-only writes (If-None-Match: *), found by a probe
    # before the first commit | best_effort: accept it, commits are then check-then-put + read-back
    conditional_writes: str = "required"
    # -- checkpoints (any store)
    checkpoint_keep: int = 2  # newest checkpoints kept per run attempt (>= 1; older ones deleted)


#: botocore's own check of region names (botocore.utils.validate_region_name)
_REGION = r"[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?"


def _endpoint_ok(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return False
    return bool(parts.hostname) and not any(c.isspace() or ord(c) < 32 for c in url)


def validate_store(st: StoreConfig) -> list[str]:
    """Impossible ``store.*`` values (choices are checked with the other CHOICES)."""
    problems: list[str] = []
    if isinstance(st.uri, str):
        if not st.uri:
            problems.append("store.uri: must not be empty")
        elif st.uri.startswith("s3://") and not st.uri[5:].split("/", 1)[0]:
            problems.append(f"store.uri: {st.uri!r} names no bucket (use s3://bucket/prefix)")
    ep = st.endpoint_url
    if isinstance(ep, str) and ep and not ep.startswith(("http://", "https://")):
        problems.append("store.endpoint_url: must start with http:// or https://")
    if isinstance(ep, str) and "@" in ep.split("//", 1)[-1].split("/", 1)[0]:
        problems.append("store.endpoint_url: must not contain credentials (user:password@)")
    elif isinstance(ep, str) and ep.startswith(("http://", "https://")) and not _endpoint_ok(ep):
        problems.append(f"store.endpoint_url: {ep!r} is not a URL (scheme://host[:port], no spaces)")
    if isinstance(st.region, str) and st.region and not _full(_REGION, st.region):
        problems.append(f"store.region: {st.region!r} is not a region name (letters, digits and '-')")
    if isinstance(st.max_attempts, int) and not 1 <= st.max_attempts <= 20:
        problems.append(f"store.max_attempts: must be within [1, 20], got {st.max_attempts}")
    for key in ("connect_timeout", "read_timeout"):
        value = getattr(st, key)
        if isinstance(value, float) and not value > 0:
            problems.append(f"store.{key}: must be > 0, got {value}")
    for key in ("multipart_threshold_mb", "multipart_chunksize_mb"):
        value = getattr(st, key)
        if isinstance(value, int) and value < 5:
            problems.append(f"store.{key}: must be >= 5 (the S3 minimum part size), got {value}")
    if isinstance(st.transfer_concurrency, int) and st.transfer_concurrency < 1:
        problems.append(f"store.transfer_concurrency: must be >= 1, got {st.transfer_concurrency}")
    if isinstance(st.checkpoint_keep, int) and st.checkpoint_keep < 1:
        problems.append(f"store.checkpoint_keep: must be >= 1, got {st.checkpoint_keep}")
    return problems


@dataclass
class ExecutorConfig:
    backend: str = "local"  # local (processes on this machine) | k8s
    parallel: int = 0  # concurrent local runs; 0 = number of CPU cores (1 per GPU when on CUDA)
    # runs trained together in one worker as a horizontally fused pack (aal_k8s.packs): runs of a
    # stage with the same config and seed; 1 = one run per worker/Job (ids and outputs unchanged)
    runs_per_job: int = 1


#: The default k8s.image: a placeholder that must be replaced (the k8s backend refuses to create Jobs with it).
PLACEHOLDER_IMAGE = "ghcr.io/your-org/aal-k8s:0.1.0"


def _gpu_toleration() -> list[dict]:
    return [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@dataclass
class K8sConfig:
    """The Kubernetes backend: one batch/v1 Job per run (see aal_k8s.backends.k8s, docs/kubernetes.md)."""

    namespace: str = "aal-k8s"  # namespace of the Jobs (k8s/namespace.yaml creates it)
    context: str = ""  # kubeconfig context; "" = the current one (unused inside a cluster)
    image: str = PLACEHOLDER_IMAGE  # the worker image built from Dockerfile: push it, set this
    image_pull_policy: str = "IfNotPresent"  # Always | IfNotPresent | Never
    image_pull_secrets: list[str] = field(default_factory=list)  # docker-registry Secrets (private registry)
    gpus: int = 1  # GPUs per run; 0 = CPU-only pods
    gpu_resource: str = "nvidia.com/gpu"  # extended resource name of the GPU device plugin
    cpu_request: str | int | float = "8"  # CPU cores reserved per run; also the worker's torch thread count
    cpu_limit: str | int | float = "8"  # "" = no CPU limit; equal to the request (with memory too) = Guaranteed QoS
    memory_request: str | int | float = "48Gi"  # memory reserved per run
    memory_limit: str | int | float = "48Gi"  # "" = no limit; above it the pod is OOM-killed (exit 137, retried)
    # node disk for the pod's /tmp (checkpoint staging; the dataset pack when no cache volume is
    # set): a request the scheduler places pods by, and the emptyDir's size limit. auto = the pack's
    # size + 2Gi without a cache volume, 2Gi with one; "" = neither
    ephemeral_storage: str | int | float = "auto"
    shm_size: str | int | float = "8Gi"  # size of /dev/shm (a memory-backed emptyDir; DataLoader workers need it)
    node_selector: dict[str, str] = field(default_factory=dict)  # e.g. {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}
    tolerations: list[dict] = field(default_factory=_gpu_toleration)  # Kubernetes Toleration objects
    priority_class: str = ""  # PriorityClass of the worker pods; "" = the cluster default
    service_account: str = ""  # ServiceAccount of the worker pods; "" = the namespace default (token not mounted)
    queue_name: str = ""  # Kueue LocalQueue; set = Jobs carry kueue.x-k8s.io/queue-name and start suspended
    backoff_limit: int = 2  # pod retries after crashes (exit 1, OOM); disruptions do not count, exit 2 fails at once
    active_deadline_seconds: int | None = 86400  # wall-clock limit of one Job (all attempts); null = none
    ttl_seconds_after_finished: int | None = 604800  # delete finished Jobs after 7 days; null = keep them
    store_secret: str = "aal-k8s-store"  # Secret whose keys become the worker's env (envFrom); "" = none
    data_volume_claim: str = ""  # PVC holding dataset files, mounted read-only at data_mount_path; "" = none
    data_mount_path: str = "/data"  # where data_volume_claim is mounted (point dataset.root below it)
    cache_host_path: str = ""  # node folder for dataset packs, shared by the node's pods (AAL_K8S_CACHE); see docs
    cache_volume_claim: str = ""  # or a PVC for that cache (ReadWriteMany: one download per cluster)
    cache_mount_path: str = "/var/cache/aal-k8s"  # where the cache is mounted in the pods
    # JSON merge patch (RFC 7386) onto every worker pod template, {metadata: ..., spec: ...}: affinity,
    # runtimeClassName, labels/annotations for cost attribution... (null deletes; lists replace)
    pod_template_patch: dict = field(default_factory=dict)
    store_volume_claim: str = ""  # a (ReadWriteMany) PVC holding a folder store.uri, mounted at that path in every pod
    env: dict[str, str] = field(default_factory=dict)  # extra plain env for the worker; secrets go in store_secret
    api_max_attempts: int = 6  # tries of one API call on 429 / 5xx / connection errors (other 4xx: never retried)
    api_backoff_seconds: float = 1.0  # first retry delay, doubled after each failure
    api_backoff_max_seconds: float = 60.0  # cap of one retry delay, Retry-After included
    api_timeout_seconds: float = 60.0  # client-side timeout of one API request
    watch_timeout_seconds: int = 300  # server-side timeout of one watch request; the watch then resumes
    # `wait` (pipeline) gives up, naming the pending runs and why, once no run has started or finished
    # for this long while some are pending (unschedulable, never admitted by a queue); null = forever
    wait_patience_seconds: int | None = 3600


@dataclass
class PlanConfig:
    # ``aal-k8s plan`` and the confirmation of submit/pipeline on Kubernetes (aal_k8s.cost).
    device_class: str = "h100-target"  # rates when no committed run calibrates them (aal_k8s.rates.DEVICE_RATES)
    gpu_hour_price: float = 3.0  # price of one GPU-hour (any currency) for the plan's cost line
    # seconds a k8s Job holds its GPU before the worker process starts (volumes, image pull, container
    # creation), added per Job: the worker cannot measure it (aal_k8s.cost); e.g. from `kubectl get pod
    # -o yaml` (status.startTime to the container's startedAt) on your cluster
    pod_startup_seconds: float = 0.0
    confirm_above_jobs: int = 50  # k8s submit/pipeline ask before creating more Jobs than this (--yes skips)


@dataclass
class Config:
    experiment: str = ""  # store prefix of this experiment; "" = the dataset name
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    k8s: K8sConfig = field(default_factory=K8sConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)

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
    "dataset.pack_to": ("auto", "disk", "memory"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "bf16", "fp32"),
    "adversarial.final_selection": ("best_on_val", "adversarial"),
    "adversarial.partners_from": PARTNER_METHODS,
    "adversarial.lambda_schedule": ("constant", "dann"),
    "adversarial.partner_test": ("none", "mcnemar"),
    "adversarial.lambda_search": ("grid", "halving"),
    "affinity.measure_on": ("train", "val"),
    "executor.backend": ("local", "k8s"),
    "store.addressing_style": ("auto", "path", "virtual"),
    "store.retry_mode": ("standard", "adaptive"),
    "store.conditional_writes": ("required", "best_effort"),
}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, key: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return value
        k_tp, v_tp = typing.get_args(tp) or (str, None)
        return {
            _coerce(k, k_tp, f"{key} (key)", problems): v if v_tp is None else _coerce(v, v_tp, f"{key}.{k}", problems)
            for k, v in value.items()
        }
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for candidate in inner[:-1]:  # the first type that takes the value as it is
            trial: list[str] = []
            out = _coerce(value, candidate, key, trial)
            if not trial:
                return out
        return _coerce(value, inner[-1], key, problems)
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


def _non_finite(obj, prefix: str = "") -> list[str]:
    """Every float setting that is NaN or +-inf (YAML's .nan / .inf), wherever it sits: a range
    check such as ``> 0`` lets inf through, and one inf turns every weight into inf."""
    found = []
    items = (
        ((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj)
        else obj.items() if isinstance(obj, dict) else enumerate(obj)
    )  # fmt: skip
    for k, v in items:
        key = f"{prefix}[{k}]" if isinstance(obj, list) else f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, float) and not math.isfinite(v):
            found.append(f"{key}: must be a finite number, got {v}")
        elif dataclasses.is_dataclass(v) or isinstance(v, (dict, list)):
            found += _non_finite(v, key)
    return found


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
    if isinstance(cfg.executor.runs_per_job, int) and cfg.executor.runs_per_job < 1:
        problems.append(f"executor.runs_per_job: must be >= 1, got {cfg.executor.runs_per_job}")
    lams = cfg.adversarial.lambdas
    if isinstance(lams, list):
        if not lams:
            problems.append("adversarial.lambdas: must list at least one value")
        if any(isinstance(x, float) and not x > 0 for x in lams):
            problems.append(f"adversarial.lambdas: every value must be > 0, got {lams}")
        if len(set(lams)) != len(lams):
            problems.append(f"adversarial.lambdas: values must be distinct, got {lams}")
    adv, aff = cfg.adversarial, cfg.affinity
    if isinstance(adv.dann_alpha, float) and not adv.dann_alpha > 0:
        problems.append(f"adversarial.dann_alpha: must be > 0, got {adv.dann_alpha}")
    if isinstance(adv.wgan_clip, float) and not adv.wgan_clip > 0:
        problems.append(f"adversarial.wgan_clip: must be > 0, got {adv.wgan_clip}")
    if isinstance(adv.min_drop, float) and not 0.0 <= adv.min_drop < 1.0:
        problems.append(f"adversarial.min_drop: must be in [0, 1) (a fraction of accuracy), got {adv.min_drop}")
    if isinstance(adv.shared_hidden_layers, int) and adv.shared_hidden_layers < 1:
        problems.append(f"adversarial.shared_hidden_layers: must be >= 1, got {adv.shared_hidden_layers}")
    if isinstance(adv.halving_eta, int) and adv.halving_eta < 2:
        problems.append(f"adversarial.halving_eta: must be >= 2, got {adv.halving_eta}")
    rungs = adv.halving_rungs
    if isinstance(rungs, list) and all(isinstance(r, int) for r in rungs) and isinstance(t.epochs, int):
        if any(not 1 <= r < t.epochs for r in rungs) or rungs != sorted(set(rungs)):
            problems.append(
                f"adversarial.halving_rungs: must be increasing epochs within [1, train.epochs={t.epochs}), got {rungs}"
            )
    for key in ("every", "window"):
        value = getattr(aff, key)
        if isinstance(value, int) and value < 0:
            problems.append(f"affinity.{key}: must be >= 0, got {value}")
    if isinstance(s.image_size, int) and s.image_size < 16:
        problems.append(f"dataset.synthetic.image_size: must be >= 16, got {s.image_size}")
    for key, value in (("label_noise", s.label_noise), ("agreement", s.agreement)):
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            problems.append(f"dataset.synthetic.{key}: must be within [0, 1], got {value}")
    problems += _validate_real_dataset(cfg.dataset)
    name = cfg.experiment_name
    if isinstance(name, str) and (
        not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith(".") or ".." in name
    ):
        problems.append(f"experiment: {name!r} may only hold letters, digits, '-', '_' and '.' (not starting with '.')")
    problems += validate_store(cfg.store)
    pre = cfg.model.pretrained
    if pre not in ("imagenet", "none") and isinstance(pre, str) and not os.path.isfile(pre):
        problems.append(f"model.pretrained: {pre!r} is neither imagenet, none nor an existing file")
    problems += validate_k8s(cfg.k8s)
    if cfg.k8s.store_volume_claim and isinstance(cfg.store.uri, str) and cfg.store.uri.startswith("s3://"):
        problems.append("k8s.store_volume_claim: only for a folder store.uri (an s3:// store needs no volume)")
    if cfg.plan.device_class not in DEVICE_RATES:
        problems.append(f"plan.device_class: {cfg.plan.device_class!r} is not one of {', '.join(DEVICE_RATES)}")
    if isinstance(cfg.plan.gpu_hour_price, float) and cfg.plan.gpu_hour_price < 0:
        problems.append(f"plan.gpu_hour_price: must be >= 0, got {cfg.plan.gpu_hour_price}")
    if isinstance(cfg.adversarial.seeds, int) and cfg.adversarial.seeds < 1:
        problems.append(f"adversarial.seeds: must be >= 1, got {cfg.adversarial.seeds}")
    if isinstance(cfg.plan.pod_startup_seconds, float) and cfg.plan.pod_startup_seconds < 0:
        problems.append(f"plan.pod_startup_seconds: must be >= 0, got {cfg.plan.pod_startup_seconds}")
    if isinstance(cfg.plan.confirm_above_jobs, int) and cfg.plan.confirm_above_jobs < 0:
        problems.append(f"plan.confirm_above_jobs: must be >= 0, got {cfg.plan.confirm_above_jobs}")
    finite = _non_finite(cfg)
    return finite + _new_keys(finite, problems)  # "must be > 0, got nan" adds nothing


def _validate_real_dataset(d: DatasetConfig) -> list[str]:
    """Values of the real-dataset keys. ``dataset.root`` is checked when the data is loaded, not
    here: planning (``--dry-run``) must work on a machine without the data."""
    problems = []
    if isinstance(d.val_fraction, float) and not 0.0 < d.val_fraction < 1.0:
        problems.append(f"dataset.val_fraction: must be within (0, 1), got {d.val_fraction}")
    if isinstance(d.workers, int) and d.workers < 0:
        problems.append(f"dataset.workers: must be >= 0, got {d.workers}")
    if isinstance(d.augment.crop, float) and not 0.0 < d.augment.crop <= 1.0:
        problems.append(f"dataset.augment.crop: must be within (0, 1], got {d.augment.crop}")
    if isinstance(d.pack, str) and not d.pack.strip():
        problems.append("dataset.pack: must be auto, none, or a pack's folder or URI")
    if isinstance(d.root, str) and not d.root.strip():
        problems.append("dataset.root: must be a folder path (or left unset)")
    return problems


def _new_keys(reported: list[str], more: list[str]) -> list[str]:
    """``more`` minus problems about keys already reported (a wrong type makes range checks moot)."""
    seen = {p.split(":")[0].split("[")[0] for p in reported}
    return [p for p in more if p.split(":")[0] not in seen]


def _dataset_name(data: dict):
    """``data["dataset"]["name"]`` when that is where it sits (a wrong shape is _merge's to report)."""
    section = data.get("dataset")
    return section.get("name") if isinstance(section, dict) else None


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    dataset: str | None = None,
    base: dict | None = None,
) -> Config:
    """Build the experiment config: defaults < dataset preset < ``base`` < YAML file < ``--set`` overrides.

    ``dataset`` (the CLI's ``--dataset``) picks the preset and wins over the file's dataset.name.
    ``base`` is a pinned experiment's recorded config (aal_k8s.experiment): flags apply on top.
    """
    problems: list[str] = []
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"config file {str(p)!r} does not exist"])
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError([f"config file {str(p)!r} is not UTF-8 text (byte {e.start})"]) from None
        except OSError as e:
            raise ConfigError([f"config file {str(p)!r} cannot be read ({e.strerror or type(e).__name__})"]) from None
        try:
            loaded = yaml.safe_load(text)
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

    base = base or {}
    name = _dataset_name(over) or _dataset_name(data) or _dataset_name(base) or "synthetic"
    cfg = Config()
    preset = DATASET_PRESETS.get(name) if isinstance(name, str) else None
    if preset:
        _merge(cfg, preset, "", problems)
    _merge(cfg, base, "", problems)
    _merge(cfg, data, "", problems)
    _merge(cfg, over, "", problems)
    problems += _new_keys(problems, validate(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def store_config_from_dict(data: Any, uri: str) -> tuple[StoreConfig, list[str]]:
    """A ``store`` section for ``uri`` from a mapping (its own ``uri`` key ignored) and every
    problem with it: how a worker rebuilds the store options its backend sent (``aal_k8s.store``)."""
    opts = StoreConfig(uri=uri)
    problems: list[str] = []
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "uri"}
    _merge(opts, data, "store", problems)
    return opts, problems or validate_store(opts)


def config_from_dict(data: dict) -> Config:
    """Rebuild a validated Config from ``Config.to_dict()`` output (e.g. inside a RunSpec)."""
    cfg = Config()
    problems: list[str] = []
    _merge(cfg, data, "", problems)
    problems += _new_keys(problems, validate(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


# -- the k8s section ---------------------------------------------------------------------------
# Kubernetes' own formats, checked here so a bad value fails before any Job is rendered.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_VALUE = rf"({_LABEL_NAME})?"
_QUANTITY = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?"
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}  # fmt: skip
#: Env names the manifest sets itself.
K8S_RESERVED_ENV = (
    "AAL_K8S_THREADS", "OMP_NUM_THREADS", "PYTHONUNBUFFERED", "POD_NAME", "AAL_K8S_STORE_OPTIONS", "AAL_K8S_CACHE",
)  # fmt: skip
#: Substrings of env names that hold credentials: those belong in the Secret (k8s.store_secret).
_SECRET_ENV_HINTS = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "PRIVATE", "CREDENTIAL")


def _full(pattern: str, value) -> bool:
    import re

    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


def parse_quantity(q: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "8", "48Gi", "1e3") as a number."""
    import re

    q = str(q)
    m = re.fullmatch(_QUANTITY, q)
    if m is None:
        raise ValueError(f"not a Kubernetes quantity: {q!r}")
    suffix = m.group(3) or ""
    number = float(m.group(1))
    if suffix[:1] in ("e", "E"):
        return number * 10 ** int(suffix[1:])
    return number * _SUFFIX[suffix]


def _qualified_name(key) -> bool:
    """A label / resource key: optional DNS-subdomain prefix and '/', then a name of <= 63 chars."""
    if not isinstance(key, str):
        return False
    prefix, _, name = key.rpartition("/")
    return (not prefix or (len(prefix) <= 253 and _full(_DNS_SUBDOMAIN, prefix))) and _full(_LABEL_NAME, name)


def validate_k8s(k) -> list[str]:
    """Every impossible value in the ``k8s`` section, each naming its key."""
    p: list[str] = []
    if not (_full(_DNS_LABEL, k.namespace) and len(k.namespace) <= 63):
        p.append(f"k8s.namespace: {k.namespace!r} is not a DNS-1123 label (lowercase letters, digits, '-')")
    if not isinstance(k.image, str) or not k.image.strip() or any(c.isspace() for c in k.image):
        p.append(f"k8s.image: {k.image!r} is not an image reference")
    if k.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
        p.append(f"k8s.image_pull_policy: {k.image_pull_policy!r} is not one of Always, IfNotPresent, Never")
    names = {
        "priority_class": k.priority_class, "service_account": k.service_account, "queue_name": k.queue_name,
        "store_secret": k.store_secret, "data_volume_claim": k.data_volume_claim,
        "cache_volume_claim": k.cache_volume_claim, "store_volume_claim": k.store_volume_claim,
    }  # fmt: skip
    names.update({f"image_pull_secrets[{i}]": n for i, n in enumerate(k.image_pull_secrets)})
    for key, value in names.items():
        if value and not (_full(_DNS_SUBDOMAIN, value) and len(value) <= 253):
            p.append(f"k8s.{key}: {value!r} is not a DNS-1123 name (lowercase letters, digits, '-', '.')")
    if isinstance(k.gpus, int) and k.gpus < 0:
        p.append(f"k8s.gpus: must be >= 0, got {k.gpus}")
    if not _qualified_name(k.gpu_resource) or "/" not in str(k.gpu_resource):
        p.append(f"k8s.gpu_resource: {k.gpu_resource!r} is not an extended resource name like nvidia.com/gpu")
    amounts = {}
    for key in ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size", "ephemeral_storage"):
        value = getattr(k, key)
        if isinstance(value, bool) or value == "" and key in ("cpu_limit", "memory_limit", "ephemeral_storage"):
            continue
        if key == "ephemeral_storage" and value == "auto":
            continue
        try:
            amounts[key] = parse_quantity(str(value))
        except ValueError:
            p.append(f"k8s.{key}: {value!r} is not a Kubernetes quantity (e.g. 8, 500m, 48Gi)")
            continue
        if not amounts[key] > 0:
            p.append(f"k8s.{key}: must be > 0, got {value!r}")
    for what in ("cpu", "memory"):
        req, lim = amounts.get(f"{what}_request"), amounts.get(f"{what}_limit")
        if req is not None and lim is not None and lim < req:
            p.append(f"k8s.{what}_limit: {getattr(k, what + '_limit')!r} is below k8s.{what}_request "
                     f"{getattr(k, what + '_request')!r}")  # fmt: skip
    for key, value in k.node_selector.items():
        if isinstance(value, str) and (not _qualified_name(key) or not _full(_LABEL_VALUE, value)):
            p.append(f"k8s.node_selector: {key!r}: {value!r} is not a valid label")
    allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
    for i, t in enumerate(k.tolerations):
        where = f"k8s.tolerations[{i}]"
        if not isinstance(t, dict):
            continue  # the type check reported it
        unknown = sorted(set(t) - allowed)
        if unknown:
            p.append(f"{where}: unknown field(s) {unknown} (known: {', '.join(sorted(allowed))})")
        op = t.get("operator", "Equal")
        if op not in ("Exists", "Equal"):
            p.append(f"{where}.operator: {op!r} is not one of Exists, Equal")
        if op == "Exists" and t.get("value"):
            p.append(f"{where}.value: must be empty when operator is Exists")
        if "key" in t and t["key"] and not _qualified_name(t["key"]):
            p.append(f"{where}.key: {t['key']!r} is not a valid label key")
        if "value" in t and not _full(_LABEL_VALUE, t["value"]):
            p.append(f"{where}.value: {t['value']!r} is not a valid label value")
        if t.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            p.append(f"{where}.effect: {t['effect']!r} is not one of NoSchedule, PreferNoSchedule, NoExecute")
        secs = t.get("tolerationSeconds")
        if secs is not None and (isinstance(secs, bool) or not isinstance(secs, int) or secs < 0):
            p.append(f"{where}.tolerationSeconds: must be an integer >= 0, got {secs!r}")
    for key in ("backoff_limit",):
        if isinstance(getattr(k, key), int) and getattr(k, key) < 0:
            p.append(f"k8s.{key}: must be >= 0, got {getattr(k, key)}")
    for key in ("active_deadline_seconds", "watch_timeout_seconds", "api_max_attempts", "wait_patience_seconds"):
        value = getattr(k, key)
        if isinstance(value, int) and value < 1:
            p.append(f"k8s.{key}: must be >= 1, got {value}")
    if isinstance(k.ttl_seconds_after_finished, int) and k.ttl_seconds_after_finished < 0:
        p.append(f"k8s.ttl_seconds_after_finished: must be >= 0, got {k.ttl_seconds_after_finished}")
    for key in ("api_backoff_seconds", "api_backoff_max_seconds", "api_timeout_seconds"):
        value = getattr(k, key)
        if isinstance(value, float) and not value > 0:
            p.append(f"k8s.{key}: must be > 0, got {value}")
    if isinstance(k.data_mount_path, str) and (
        not k.data_mount_path.startswith("/") or k.data_mount_path.rstrip("/") in ("", "/tmp", "/dev/shm")
    ):
        p.append(f"k8s.data_mount_path: {k.data_mount_path!r} must be an absolute path other than /, /tmp, /dev/shm")
    mounts = {"data_mount_path": k.data_mount_path, "cache_mount_path": k.cache_mount_path}
    for key, path in mounts.items():
        if key != "data_mount_path" and isinstance(path, str) and (
            not path.startswith("/") or path.rstrip("/") in ("", "/tmp", "/dev/shm")
        ):
            p.append(f"k8s.{key}: {path!r} must be an absolute path other than /, /tmp, /dev/shm")
    if k.data_volume_claim and (k.cache_host_path or k.cache_volume_claim) and k.data_mount_path == k.cache_mount_path:
        p.append(f"k8s.cache_mount_path: {k.cache_mount_path!r} is also k8s.data_mount_path")
    if k.cache_host_path and k.cache_volume_claim:
        p.append("k8s.cache_host_path, k8s.cache_volume_claim: set one of them, not both")
    if isinstance(k.cache_host_path, str) and k.cache_host_path and not k.cache_host_path.startswith("/"):
        p.append(f"k8s.cache_host_path: {k.cache_host_path!r} must be an absolute path on the node")
    patch = k.pod_template_patch
    if isinstance(patch, dict):
        unknown = sorted(set(patch) - {"metadata", "spec"})
        if unknown:
            p.append(f"k8s.pod_template_patch: unknown field(s) {unknown} (a pod template has metadata and spec)")
        for key, value in patch.items():
            if key in ("metadata", "spec") and value is not None and not isinstance(value, dict):
                p.append(f"k8s.pod_template_patch.{key}: expected a mapping, got {value!r}")
        spec = patch.get("spec") if isinstance(patch.get("spec"), dict) else {}
        for key in ("containers", "volumes"):  # lists replace whole: the worker container would be lost
            if key in spec:
                p.append(f"k8s.pod_template_patch.spec.{key}: not patchable (use k8s.image, k8s.env, the volume keys)")
        for key, value in ((patch.get("metadata") or {}) if isinstance(patch.get("metadata"), dict) else {}).items():
            if key in ("labels", "annotations") and isinstance(value, dict):
                bad = [n for n in value if not _qualified_name(n)]
                if bad:
                    p.append(f"k8s.pod_template_patch.metadata.{key}: {bad} are not valid keys")
    for name in k.env:
        if not _full(_ENV_NAME, name):
            p.append(f"k8s.env: {name!r} is not a valid environment variable name")
        elif name in K8S_RESERVED_ENV:
            p.append(f"k8s.env: {name} is set by the backend itself")
        elif any(h in name.upper() for h in _SECRET_ENV_HINTS):
            p.append(
                f"k8s.env: {name} looks like a credential; put it in the Secret named by k8s.store_secret "
                "(manifests never carry secret values)"
            )
    return p

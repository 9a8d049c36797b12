"""The batch/v1 Job of one run, as a plain dict (no Kubernetes client needed: ``--dry-run`` and the
tests render manifests without a cluster).

Names and labels::

    metadata.name                      aal-<experiment>-<run id>, DNS-1123, <= 63 chars (hash-shortened)
    app.kubernetes.io/name             aal-k8s
    app.kubernetes.io/part-of          <experiment>
    app.kubernetes.io/component        worker
    app.kubernetes.io/managed-by       aal-k8s
    aal-k8s/stage                      the stage (aal_k8s.stages.STAGES: single, pairwise, multi, ...)
    aal-k8s/dataset                    celeba, ...
    aal-k8s/run                        the run id (pair-a03-a07-1a2b3c4d)
    aal-k8s/attribute                  the (first) attribute whose classifier the run trains;
                                       "all" for the stages that train every attribute (multi, affinity)
    aal-k8s/partner                    pairwise: the other head; adversarial and ablations: the
                                       (first) auxiliary head
    aal-k8s/lambda                     adversarial and ablations (aal_k8s.stages.ADVERSARIAL_MODES): lambda
    annotation aal-k8s/spec            the RunSpec as JSON (the worker reads the copy in the store)

A pack Job (``executor.runs_per_job`` > 1; aal_k8s.packs) trains several runs in one pod: its name is
``aal-<experiment>-<pack id>`` (the pack id a hash of every member's run id), it carries the stage
and dataset labels, ``aal-k8s/pack: <pack id>`` instead of the per-run labels, and the annotation
``aal-k8s/runs`` lists the run ids it trains (comma-separated), which is how the backend maps the
Job back to each member run.

A Job of a halving rung (``adversarial.lambda_search: halving``; aal_k8s.halving) stops its worker
after the rung's epoch: its name ends in ``-e<epoch>`` (a run's or a pack's), and it carries
``aal-k8s/rung: <epoch>``, which is how the backend tells one rung's pack Jobs from another's
(a pack Job without it trains its members to the end); a run's rung Job also carries the
``aal-k8s/runs`` annotation (its run), so status and cancel find it without knowing the rung.

so ``kubectl get jobs -l aal-k8s/stage=pairwise`` lists a stage, and pods carry the same labels.
Credentials reach the worker only through ``envFrom`` of the Secret named by ``k8s.store_secret``;
no manifest ever holds a secret value.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict

import yaml

from aal_k8s.config import PACK_TO_ENV, pod_pack_destination
from aal_k8s.errors import EXIT_USAGE
from aal_k8s.runspec import RunSpec
from aal_k8s.stages import ADVERSARIAL_MODES, ALL_ATTRIBUTE_STAGES

APP = "aal-k8s"
WORKER_CONTAINER = "worker"
#: The non-root user of the image (Dockerfile: USER 10001:10001); pods run as it.
WORKER_UID = 10001
LABEL_PREFIX = "aal-k8s/"
STAGE_LABEL = LABEL_PREFIX + "stage"
RUN_LABEL = LABEL_PREFIX + "run"
PACK_LABEL = LABEL_PREFIX + "pack"
RUNS_ANNOTATION = LABEL_PREFIX + "runs"
RUNG_LABEL = LABEL_PREFIX + "rung"
PART_OF_LABEL = "app.kubernetes.io/part-of"
SPEC_ANNOTATION = LABEL_PREFIX + "spec"
EXPERIMENT_ANNOTATION = LABEL_PREFIX + "experiment"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MAX_NAME = 63

_LABEL_VALUE_OK = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_DNS_LABEL_OK = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _digest(*parts: str, n: int = 8) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:n]


def _dns(text: str) -> str:
    """Lowercase, every run of characters outside [a-z0-9] becomes one '-', no '-' at the ends."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def job_name(experiment: str, run_id: str) -> str:
    """``aal-<experiment>-<run id>`` when that is already a DNS-1123 label of <= 63 chars; otherwise
    the cleaned-up experiment is cut short and a hash of (experiment, run id) appended, so distinct
    (experiment, run) pairs keep distinct names and the run id stays readable."""
    plain = f"aal-{experiment}-{run_id}"
    if len(plain) <= MAX_NAME and _DNS_LABEL_OK.fullmatch(plain):
        return plain
    h = _digest(experiment, run_id, n=10)
    run = _dns(run_id)[: MAX_NAME - len("aal--") - len(h) - 1]
    room = MAX_NAME - len("aal-") - len(run) - len(h) - 2
    exp = _dns(experiment)[: max(room, 0)].strip("-")
    return "-".join(p for p in ("aal", exp, run, h) if p)


def label_value(text: str) -> str:
    """``text`` when it is a valid label value; else a cleaned, <= 63-char value with a hash."""
    if _LABEL_VALUE_OK.fullmatch(text):
        return text
    h = _digest(text)
    clean = re.sub(r"[^-A-Za-z0-9_.]+", "_", text)[: MAX_NAME - len(h) - 1].strip("-_.")
    return f"{clean}-{h}" if clean else h


def _common_labels(spec: RunSpec) -> dict[str, str]:
    """The labels every Job of ``spec``'s stage carries, a run's or a pack's (what ``selector`` selects on)."""
    return {
        "app.kubernetes.io/name": APP,
        PART_OF_LABEL: label_value(spec.experiment),
        "app.kubernetes.io/component": WORKER_CONTAINER,
        "app.kubernetes.io/managed-by": APP,
        STAGE_LABEL: label_value(spec.stage),
        LABEL_PREFIX + "dataset": label_value(spec.dataset),
    }


def run_labels(spec: RunSpec) -> dict[str, str]:
    labels = {
        **_common_labels(spec),
        RUN_LABEL: label_value(spec.run_id),
        LABEL_PREFIX + "attribute": label_value("all" if spec.stage in ALL_ATTRIBUTE_STAGES else spec.primary[0]),
    }
    others = list(spec.primary[1:]) + list(spec.auxiliary)
    if spec.stage not in ALL_ATTRIBUTE_STAGES and others:
        labels[LABEL_PREFIX + "partner"] = label_value(others[0])  # group: the first of several
    if spec.mode in ADVERSARIAL_MODES:
        labels[LABEL_PREFIX + "lambda"] = label_value(f"{spec.lam:g}")
    return labels


def selector(experiment: str, stages=None, run_id: str | None = None, pack: str | None = None) -> str:
    """Label selector of an experiment's Jobs (and their pods), optionally of some stages, one run
    or one pack (its pack id)."""
    parts = [f"app.kubernetes.io/name={APP}", f"{PART_OF_LABEL}={label_value(experiment)}"]
    stages = sorted(set(stages or ()))
    if len(stages) == 1:
        parts.append(f"{STAGE_LABEL}={label_value(stages[0])}")
    elif stages:
        parts.append(f"{STAGE_LABEL} in ({','.join(label_value(s) for s in stages)})")
    if run_id:
        parts.append(f"{RUN_LABEL}={label_value(run_id)}")
    if pack:
        parts.append(f"{PACK_LABEL}={label_value(pack)}")
    return ",".join(parts)


def _quantity(q) -> str:
    return str(q)


#: /tmp besides the pack: checkpoint staging, torch/triton caches.
TMP_HEADROOM_GI = 2


def _pack_gi(pack_bytes: int) -> int:
    return -(-pack_bytes // 2**30)  # whole GiB, rounded up


def ephemeral_storage(cfg, pack_bytes: int) -> str:
    """The pod's /tmp size (request and emptyDir limit): ``k8s.ephemeral_storage``, or with auto
    TMP_HEADROOM_GI plus the pack's size when it lands in /tmp (on disk without a cache volume)."""
    k = cfg.k8s
    if k.ephemeral_storage != "auto":
        return _quantity(k.ephemeral_storage)
    in_tmp = pod_pack_destination(cfg) == "disk" and not (k.cache_host_path or k.cache_volume_claim)
    return f"{(_pack_gi(pack_bytes) if in_tmp else 0) + TMP_HEADROOM_GI}Gi"


def _plus_gi(q, gi: int) -> str:
    """Kubernetes quantity ``q`` plus ``gi`` GiB (``q`` itself when ``gi`` is 0)."""
    if not gi:
        return _quantity(q)
    from aal_k8s.config import parse_quantity

    total = int(parse_quantity(q)) + gi * 2**30
    return f"{total // 2**30}Gi" if total % 2**30 == 0 else str(total)


def _resources(k, tmp_size: str = "", pack_gi: int = 0) -> dict:
    """``pack_gi``: GiB the pack adds to the memory request and limit (streamed into memory)."""
    requests = {"cpu": _quantity(k.cpu_request), "memory": _plus_gi(k.memory_request, pack_gi)}
    if tmp_size:  # scheduled onto a node with that much disk; evicted only above the emptyDir's limit
        requests["ephemeral-storage"] = tmp_size
    limits = {}
    if k.cpu_limit != "":
        limits["cpu"] = _quantity(k.cpu_limit)
    if k.memory_limit != "":
        limits["memory"] = _plus_gi(k.memory_limit, pack_gi)
    if k.gpus > 0:  # extended resources: request == limit, and the limit is what the scheduler needs
        requests[k.gpu_resource] = str(k.gpus)
        limits[k.gpu_resource] = str(k.gpus)
    return {"requests": requests, "limits": limits}


def store_options_json(cfg) -> str:
    """The store options (the ``store`` section minus the URI: endpoint, retries, checkpoints; never
    credentials) as the worker reads them from ``AAL_K8S_STORE_OPTIONS``."""
    try:
        from aal_k8s.store import STORE_OPTIONS_ENV, store_options_env
    except ImportError:  # a store package without options: the same contract, by hand
        return json.dumps({k: v for k, v in asdict(cfg.store).items() if k != "uri"}, sort_keys=True)
    return store_options_env(cfg.store)[STORE_OPTIONS_ENV]


def _env(cfg) -> list[dict]:
    k = cfg.k8s
    threads = {"resourceFieldRef": {"containerName": WORKER_CONTAINER, "resource": "requests.cpu", "divisor": "1"}}
    env = [
        {"name": "AAL_K8S_THREADS", "valueFrom": threads},  # CPU request, rounded up: no oversubscription
        {"name": "OMP_NUM_THREADS", "valueFrom": threads},
        {"name": "PYTHONUNBUFFERED", "value": "1"},  # logs reach `kubectl logs` as they are written
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},  # names the attempt
        {"name": "AAL_K8S_STORE_OPTIONS", "value": store_options_json(cfg)},
    ]
    if k.cache_host_path or k.cache_volume_claim:
        env.append({"name": "AAL_K8S_CACHE", "value": k.cache_mount_path})  # dataset packs, shared
    env.append({"name": PACK_TO_ENV, "value": pod_pack_destination(cfg)})  # what the requests are sized for
    env += [{"name": name, "value": str(value)} for name, value in sorted(k.env.items())]
    return env


def merge_patch(target, patch):
    """``target`` with the JSON merge patch ``patch`` applied (RFC 7386): mappings merge key by key,
    null deletes a key, anything else (lists too) replaces. Neither argument is modified."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def rung_job_name(experiment: str, run_id: str, until_epoch: int = 0) -> str:
    """The Job of a run, or of one halving rung of it (``until_epoch``; aal_k8s.halving): each rung
    its own Job, so a finished rung's Job never stands in for the next one's."""
    return job_name(experiment, f"{run_id}-e{until_epoch}" if until_epoch else run_id)


def pack_job_name(experiment: str, pack: list[RunSpec], until_epoch: int = 0) -> str:
    """The Job of a pack (aal_k8s.planner.job_packs): named from every member's run id, committed
    ones too, so it keeps its name while members commit; a pack of one is its run's (rung's) Job."""
    from aal_k8s.packs import pack_id  # a pack of one: its run id

    return rung_job_name(experiment, pack_id(pack), until_epoch)


def job_runs(job: dict) -> list[str]:
    """The run ids a pack Job, or a run's Job of a halving rung, trains (its ``aal-k8s/runs``
    annotation); [] for a run's own Job to the end (found by its name, ``job_name``)."""
    text = ((job.get("metadata") or {}).get("annotations") or {}).get(RUNS_ANNOTATION) or ""
    return [r for r in text.split(",") if r]


def job_rung(job: dict) -> int:
    """The halving rung (its until-epoch) a Job trains to; 0: to the end (its ``aal-k8s/rung`` label)."""
    text = ((job.get("metadata") or {}).get("labels") or {}).get(RUNG_LABEL) or "0"
    return int(text) if text.isdigit() else 0


def _rung_labels(until_epoch: int) -> dict[str, str]:
    return {RUNG_LABEL: str(until_epoch)} if until_epoch else {}


def job_manifest(spec: RunSpec, cfg, pack_bytes: int = 0, until_epoch: int = 0) -> dict:
    """The Job that runs ``aal-k8s worker`` for ``spec`` (``cfg``: the experiment Config;
    ``pack_bytes``: one download of the dataset pack, which sizes the pod's /tmp or its memory; ``until_epoch``:
    a halving rung, the worker stops after that epoch)."""
    annotations = {
        SPEC_ANNOTATION: json.dumps(asdict(spec), sort_keys=True, separators=(",", ":")),
        EXPERIMENT_ANNOTATION: spec.experiment,
        LABEL_PREFIX + "store": cfg.store.uri,
    }
    if until_epoch:  # the name depends on the rung, which status and cancel do not know: they read this
        annotations[RUNS_ANNOTATION] = spec.run_id
    name = rung_job_name(spec.experiment, spec.run_id, until_epoch)
    labels = {**run_labels(spec), **_rung_labels(until_epoch)}
    return _job(name, labels, annotations, spec.experiment, [spec.run_id], cfg, pack_bytes, until_epoch)


def pack_manifest(pack: list[RunSpec], members: list[RunSpec], cfg, pack_bytes: int = 0, until_epoch: int = 0) -> dict:
    """The Job of ``pack`` (named from all of it) that trains ``members`` (its runs not committed
    yet, or not at the rung) in one ``aal-k8s worker --run A --run B ...``, to the end or to the
    halving rung ``until_epoch``; a pack of one is ``job_manifest``."""
    if len(pack) == 1:
        return job_manifest(members[0], cfg, pack_bytes, until_epoch)
    from aal_k8s.packs import pack_id

    ids = [s.run_id for s in members]
    labels = {**_common_labels(pack[0]), PACK_LABEL: label_value(pack_id(pack)), **_rung_labels(until_epoch)}
    annotations = {
        RUNS_ANNOTATION: ",".join(ids),  # run ids never hold a comma (aal_k8s.store.layout.check_name)
        EXPERIMENT_ANNOTATION: pack[0].experiment,
        LABEL_PREFIX + "store": cfg.store.uri,
    }
    name = pack_job_name(pack[0].experiment, pack, until_epoch)
    return _job(name, labels, annotations, pack[0].experiment, ids, cfg, pack_bytes, until_epoch)


def _job(name: str, labels: dict, annotations: dict, experiment: str, run_ids: list[str], cfg, pack_bytes: int,
         until_epoch: int = 0) -> dict:  # fmt: skip
    k = cfg.k8s
    tmp_size = ephemeral_storage(cfg, pack_bytes)
    job_labels = dict(labels)
    if k.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = k.queue_name
    container = {
        "name": WORKER_CONTAINER,
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        "command": ["aal-k8s"],
        "args": ["worker", "--store", cfg.store.uri, "--experiment", experiment, *[x for r in run_ids for x in ("--run", r)],
                 *(["--until-epoch", str(until_epoch)] if until_epoch else [])],  # fmt: skip
        "env": _env(cfg),
        "envFrom": [{"secretRef": {"name": k.store_secret}}] if k.store_secret else [],
        "resources": _resources(k, tmp_size, _pack_gi(pack_bytes) if pod_pack_destination(cfg) == "memory" else 0),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",  # the last log lines explain a crash
    }
    if not container["envFrom"]:
        del container["envFrom"]
    volumes = [
        {"name": "tmp", "emptyDir": {"sizeLimit": tmp_size} if tmp_size else {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _quantity(k.shm_size)}},
    ]
    if k.data_volume_claim:
        container["volumeMounts"].append({"name": "data", "mountPath": k.data_mount_path, "readOnly": True})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": k.data_volume_claim, "readOnly": True}})
    if k.cache_host_path or k.cache_volume_claim:
        container["volumeMounts"].append({"name": "cache", "mountPath": k.cache_mount_path})
        if k.cache_host_path:  # node-local, one download per node; the folder must exist, writable by WORKER_UID
            volumes.append({"name": "cache", "hostPath": {"path": k.cache_host_path, "type": "Directory"}})
        else:
            volumes.append({"name": "cache", "persistentVolumeClaim": {"claimName": k.cache_volume_claim}})
    if k.store_volume_claim:  # a folder store shared through a PVC: the same path in every pod
        path = os.path.abspath(cfg.store.uri.removeprefix("file://"))
        container["volumeMounts"].append({"name": "store", "mountPath": path})
        volumes.append({"name": "store", "persistentVolumeClaim": {"claimName": k.store_volume_claim}})
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the worker never talks to the API server
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if k.service_account:
        pod_spec["serviceAccountName"] = k.service_account
    if k.priority_class:
        pod_spec["priorityClassName"] = k.priority_class
    if k.node_selector:
        pod_spec["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in k.tolerations]
    if k.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in k.image_pull_secrets]
    job_spec = {
        "backoffLimit": k.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "podReplacementPolicy": "Failed",  # a replacement starts only once the old pod is gone (one GPU writer)
        "podFailurePolicy": {
            "rules": [
                # Preemption, eviction, node drain: not the run's fault; retry without using up backoffLimit
                # (the worker resumes from its last checkpoint in the store).
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                # The worker's reserved exit code for bad config/data: retrying cannot help.
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": WORKER_CONTAINER, "operator": "In", "values": [EXIT_USAGE]},
                },
            ]
        },
        "template": merge_patch({"metadata": {"labels": labels}, "spec": pod_spec}, k.pod_template_patch),
    }
    if k.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = k.active_deadline_seconds
    if k.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = k.ttl_seconds_after_finished
    if k.queue_name:
        job_spec["suspend"] = True  # Kueue admits the Job by un-suspending it
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": k.namespace, "labels": job_labels, "annotations": annotations},
        "spec": job_spec,
    }


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # libyaml when present: 780 Jobs in ~1 s
    def ignore_aliases(self, data) -> bool:  # repeated sub-objects are written out, never as &anchors
        return True


def to_yaml(manifests: list[dict], header: str = "") -> str:
    """Multi-document YAML to inspect (``header``: comment lines on top). Not for ``kubectl apply``:
    a Job whose spec is not in the store fails at once; ``aal-k8s submit`` writes it first."""
    out = "".join(f"# {ln}\n" if ln else "#\n" for ln in header.splitlines())
    docs = [yaml.dump(m, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 16) for m in manifests]
    return out + "".join(f"---\n{d}" for d in docs)

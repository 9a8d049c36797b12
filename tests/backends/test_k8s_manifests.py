"""The Job manifests the backend renders and every file under k8s/: strictly valid against the
official schemas (Kubernetes 1.31 and the newest kubernetes-validate knows), and shaped as the
issue asks (names, labels, failure policy, security, Kueue, no secret values)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml
from k8s_schema import kv, validate_strict

from aal_k8s.backends.k8s_manifests import WORKER_UID, job_manifest, job_name, label_value, run_labels, selector
from aal_k8s.config import load_config
from aal_k8s.backends.k8s import KubernetesError
from aal_k8s.planner import plan_stage
from aal_k8s.runspec import RunSpec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S_DIR = os.path.join(ROOT, "k8s")

VARIANTS = {
    "defaults": [],
    "kueue, priority, node selector, PVC, pull secret, extra env": [
        "k8s.queue_name=gpu", "k8s.priority_class=aal-low", "k8s.node_selector={nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}",
        "k8s.data_volume_claim=celeba-data", "k8s.image_pull_secrets=[regcred]", "k8s.env={HF_HUB_OFFLINE: '1', LOG_LEVEL: debug}",
        "k8s.service_account=aal-k8s-worker", "k8s.cache_volume_claim=pack-cache",
    ],
    "node-local pack cache": ["k8s.cache_host_path=/var/cache/aal-k8s", "k8s.data_volume_claim=celeba-data"],
    "cpu-only, no limits, no secret, no deadline or ttl": [
        "k8s.gpus=0", "k8s.cpu_limit=''", "k8s.memory_limit=''", "k8s.store_secret=''", "k8s.tolerations=[]",
        "k8s.active_deadline_seconds=null", "k8s.ttl_seconds_after_finished=null",
    ],
    "numbers as quantities, other GPU resource": ["k8s.cpu_request=3.5", "k8s.cpu_limit=4", "k8s.gpus=2", "k8s.gpu_resource=amd.com/gpu"],
}  # fmt: skip


def _cfg(*overrides: str, dataset: str = "synthetic"):
    return load_config(
        overrides=["store.uri=s3://aal/runs", "k8s.image=registry.example/aal-k8s:1", *overrides], dataset=dataset
    )


def _all_specs(cfg) -> list[RunSpec]:
    specs = plan_stage("single", cfg) + plan_stage("pairwise", cfg) + plan_stage("multi", cfg)
    return specs + plan_stage("adversarial", cfg, partners={"square": "ring", "ring": None, "cross": "blue_tint"})


@pytest.mark.parametrize("overrides", list(VARIANTS.values()), ids=list(VARIANTS))
def test_every_rendered_job_validates_strictly_against_the_official_schemas(overrides):
    cfg = _cfg(*overrides)
    specs = _all_specs(cfg)
    assert {s.stage for s in specs} == {"single", "pairwise", "multi", "adversarial"}
    for spec in specs:
        validate_strict(job_manifest(spec, cfg))
    for stage in ("single", "pairwise", "multi", "adversarial"):  # and through the package's own entry point
        job = job_manifest(next(s for s in specs if s.stage == stage), cfg)
        for version in ("1.31", kv.latest_version()):
            kv.validate(job, version, strict=True)


def test_the_validator_is_strict_enough_to_catch_a_misspelt_field():
    cfg = _cfg()
    job = job_manifest(plan_stage("single", cfg)[0], cfg)
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        validate_strict(job)
    job = job_manifest(plan_stage("single", cfg)[0], cfg)
    job["spec"]["backoffLimit"] = "two"
    with pytest.raises(kv.ValidationError):
        validate_strict(job)
    with pytest.raises(kv.ValidationError):
        kv.validate(job, "1.31", strict=True)


NAMES = [
    ("synthetic", "pair-a01-a02-1a2b3c4d", "aal-synthetic-pair-a01-a02-1a2b3c4d"),
    ("celeba", "adv-a03-x07-0f0f0f0f", "aal-celeba-adv-a03-x07-0f0f0f0f"),
    ("CelebA_v2.1", "sin-a01-12345678", None),  # upper case, '_' and '.': cleaned up and hashed
    ("x" * 70, "mul-k40-87654321", None),  # too long: cut short and hashed
]


@pytest.mark.parametrize("experiment, run_id, expected", NAMES, ids=[n[0][:12] for n in NAMES])
def test_job_names_are_deterministic_dns_labels_of_at_most_63_chars(experiment, run_id, expected):
    name = job_name(experiment, run_id)
    assert name == job_name(experiment, run_id)
    assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert run_id in name  # the run id stays readable in kubectl output
    if expected:
        assert name == expected
    else:
        assert name != job_name(experiment + "2", run_id)  # hashed: distinct experiments stay distinct


def test_experiments_that_clean_up_alike_get_distinct_job_names():
    assert job_name("My_Exp", "sin-a01-12345678") != job_name("my-exp", "sin-a01-12345678")


def test_labels_are_the_ones_the_issue_names_and_select_a_stage():
    cfg = _cfg()
    spec = plan_stage("adversarial", cfg, partners={"square": "ring"})[2]
    job = job_manifest(spec, cfg)
    labels = job["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/name": "aal-k8s",
        "app.kubernetes.io/part-of": "synthetic",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "aal-k8s",
        "aal-k8s/stage": "adversarial",
        "aal-k8s/dataset": "synthetic",
        "aal-k8s/run": spec.run_id,
        "aal-k8s/attribute": "square",
        "aal-k8s/partner": "ring",
        "aal-k8s/lambda": "0.3",
    }
    assert job["spec"]["template"]["metadata"]["labels"] == labels  # pods: kubectl get pods -l ... too
    assert selector("synthetic", ["pairwise"]) == (
        "app.kubernetes.io/name=aal-k8s,app.kubernetes.io/part-of=synthetic,aal-k8s/stage=pairwise"
    )
    assert run_labels(plan_stage("multi", cfg)[0])["aal-k8s/attribute"] == "all"
    pair = plan_stage("pairwise", cfg)[0]
    assert (run_labels(pair)["aal-k8s/attribute"], run_labels(pair)["aal-k8s/partner"]) == pair.primary


def test_label_values_that_kubernetes_would_refuse_are_cleaned_and_hashed():
    assert label_value("Big_Lips") == "Big_Lips" and label_value("5_o_Clock_Shadow") == "5_o_Clock_Shadow"
    for bad in ("_x", "a b", "x" * 80, "ü"):
        v = label_value(bad)
        assert len(v) <= 63 and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", v)


def test_the_runspec_rides_along_as_an_annotation():
    cfg = _cfg()
    spec = plan_stage("pairwise", cfg)[4]
    ann = job_manifest(spec, cfg)["metadata"]["annotations"]
    back = RunSpec.from_dict(json.loads(ann["aal-k8s/spec"]))
    assert back == spec and back.run_id == spec.run_id and back.config == spec.config
    assert ann["aal-k8s/experiment"] == "synthetic" and ann["aal-k8s/store"] == "s3://aal/runs"


def test_the_pod_runs_the_worker_once_and_the_job_fails_at_once_on_exit_2():
    cfg = _cfg()
    spec = plan_stage("single", cfg)[0]
    job = job_manifest(spec, cfg)
    js, pod = job["spec"], job["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["command"] + c["args"] == [
        "aal-k8s", "worker", "--store", "s3://aal/runs", "--experiment", "synthetic", "--run", spec.run_id,
    ]  # fmt: skip
    assert pod["restartPolicy"] == "Never"
    assert js["backoffLimit"] == 2 and js["activeDeadlineSeconds"] == 86400 and js["ttlSecondsAfterFinished"] == 604800
    assert js["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": c["name"], "operator": "In", "values": [2]}},
    ]
    assert "suspend" not in js and "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # the worker's attempt id
    assert json.loads(env["AAL_K8S_STORE_OPTIONS"]["value"]) == {
        k: v for k, v in cfg.to_dict()["store"].items() if k != "uri"
    }  # the store options the worker opens its store with (endpoint, retries...; never credentials)
    assert env["AAL_K8S_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert "AAL_K8S_CACHE" not in env


def test_resources_scheduling_and_security_come_from_the_config():
    cfg = _cfg(*VARIANTS["kueue, priority, node selector, PVC, pull secret, extra env"])
    job = job_manifest(plan_stage("single", cfg)[0], cfg)
    pod = job["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["resources"] == {
        "requests": {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1", "ephemeral-storage": "2Gi"},  # synthetic: no pack
        "limits": {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"},
    }
    assert c["image"] == "registry.example/aal-k8s:1" and c["imagePullPolicy"] == "IfNotPresent"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "aal-low" and pod["serviceAccountName"] == "aal-k8s-worker"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == WORKER_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False, "privileged": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
    assert {"name": "cache", "mountPath": "/var/cache/aal-k8s"} in c["volumeMounts"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "pack-cache"}} in pod["volumes"]
    assert {"name": "AAL_K8S_CACHE", "value": "/var/cache/aal-k8s"} in c["env"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu" and job["spec"]["suspend"] is True


def test_no_gpu_request_when_gpus_is_zero():
    cfg = _cfg("k8s.gpus=0")
    [c] = job_manifest(plan_stage("single", cfg)[0], cfg)["spec"]["template"]["spec"]["containers"]
    assert not any("gpu" in r for part in c["resources"].values() for r in part)


def test_credentials_reach_the_pod_only_through_the_secret(monkeypatch):
    secrets = {
        "AWS_ACCESS_KEY_ID": "AKIAFAKEKEYID0000001",
        "AWS_SECRET_ACCESS_KEY": "fAkE/sEcReT+vAlUe/0000000000000000000000",
    }
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    cfg = _cfg()
    job = job_manifest(plan_stage("single", cfg)[0], cfg)
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["envFrom"] == [{"secretRef": {"name": "aal-k8s-store"}}]
    assert not {e["name"] for e in c["env"]} & set(secrets)
    text = yaml.safe_dump(job)
    assert not any(v in text for v in secrets.values())


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MINIO_ROOT_PASSWORD", "HF_TOKEN"])
def test_the_config_refuses_credentials_as_plain_env(name):
    from aal_k8s.errors import ConfigError

    with pytest.raises(ConfigError, match=f"k8s.env: {name} looks like a credential"):
        _cfg(f"k8s.env={{{name}: x}}")


BAD_K8S = [
    ("k8s.namespace=Team_A", "k8s.namespace: 'Team_A' is not a DNS-1123 label"),
    ("k8s.cpu_request=lots", "k8s.cpu_request: 'lots' is not a Kubernetes quantity"),
    ("k8s.memory_limit=1Gi", "k8s.memory_limit: '1Gi' is below k8s.memory_request '48Gi'"),
    ("k8s.image_pull_policy=sometimes", "k8s.image_pull_policy: 'sometimes' is not one of"),
    ("k8s.gpus=-1", "k8s.gpus: must be >= 0"),
    ("k8s.gpu_resource=gpu", "k8s.gpu_resource: 'gpu' is not an extended resource name"),
    ("k8s.tolerations=[{key: a, operator: Exists, value: b}]", "k8s.tolerations[0].value: must be empty"),
    ("k8s.tolerations=[{key: a, effect: Sometimes}]", "k8s.tolerations[0].effect: 'Sometimes' is not one of"),
    ("k8s.node_selector={a: 1}", "k8s.node_selector.a: expected a string"),
    ("k8s.queue_name=GPU Queue", "k8s.queue_name: 'GPU Queue' is not a DNS-1123 name"),
    ("k8s.active_deadline_seconds=0", "k8s.active_deadline_seconds: must be >= 1"),
    ("k8s.data_mount_path=/tmp", "k8s.data_mount_path: '/tmp' must be an absolute path other than"),
    ("k8s.env={OMP_NUM_THREADS: '4'}", "k8s.env: OMP_NUM_THREADS is set by the backend itself"),
    ("k8s.api_max_attempts=0", "k8s.api_max_attempts: must be >= 1"),
    ("k8s.env={POD_NAME: x}", "k8s.env: POD_NAME is set by the backend itself"),
    ("k8s.cache_host_path=cache", "k8s.cache_host_path: 'cache' must be an absolute path on the node"),
    ("k8s.cache_mount_path=/tmp", "k8s.cache_mount_path: '/tmp' must be an absolute path other than"),
]


@pytest.mark.parametrize("override, fragment", BAD_K8S, ids=[b[0] for b in BAD_K8S])
def test_bad_k8s_values_name_their_key(override, fragment):
    from aal_k8s.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        _cfg(override)
    assert fragment in str(e.value)


# -- k8s/ ----------------------------------------------------------------------------------------
#: Kinds without a schema in kubernetes-validate, skipped by it on purpose and checked by hand below:
#: kustomize's own file, and Kueue's CRDs (their schemas ship with Kueue, not with Kubernetes).
NO_OFFICIAL_SCHEMA = {
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
    "ResourceFlavor": "kueue.x-k8s.io/v1beta1",
    "ClusterQueue": "kueue.x-k8s.io/v1beta1",
    "LocalQueue": "kueue.x-k8s.io/v1beta1",
}


def _k8s_docs() -> list[tuple[str, dict]]:
    out = []
    for folder, _, files in os.walk(K8S_DIR):
        for f in sorted(files):
            assert f.endswith(".yaml"), f"unexpected file under k8s/: {f}"
            path = os.path.join(folder, f)
            for doc in yaml.safe_load_all(open(path)):
                if doc:
                    out.append((os.path.relpath(path, K8S_DIR), doc))
    return out


def _by_kind(kind: str) -> list[dict]:
    return [d for _, d in _k8s_docs() if d["kind"] == kind]


def test_every_file_under_k8s_validates_strictly_except_kinds_without_an_official_schema():
    validated, skipped = [], set()
    for path, doc in _k8s_docs():
        if doc["kind"] in NO_OFFICIAL_SCHEMA:
            assert doc["apiVersion"] == NO_OFFICIAL_SCHEMA[doc["kind"]], path
            with pytest.raises(kv.SchemaNotFoundError):  # skipped by the validator, said so explicitly
                kv.validate(doc, "1.31", strict=True)
            skipped.add(doc["kind"])
            continue
        validate_strict(doc)
        validated.append(f"{path}:{doc['kind']}")
    assert skipped == set(NO_OFFICIAL_SCHEMA)
    kinds = {v.split(":")[1] for v in validated}
    assert kinds >= {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap", "Job",
                     "Deployment", "Service", "PersistentVolumeClaim"}  # fmt: skip


def test_kueue_example_is_consistent_where_no_schema_checks_it():
    [flavor], [cq], [lq] = _by_kind("ResourceFlavor"), _by_kind("ClusterQueue"), _by_kind("LocalQueue")
    assert set(flavor["spec"]) <= {"nodeLabels", "nodeTaints", "tolerations", "topologyName"}
    assert set(cq["spec"]) <= {"namespaceSelector", "queueingStrategy", "resourceGroups", "cohort", "preemption",
                               "flavorFungibility", "stopPolicy", "fairSharing", "admissionChecks"}  # fmt: skip
    assert cq["spec"]["queueingStrategy"] in ("BestEffortFIFO", "StrictFIFO")
    for group in cq["spec"]["resourceGroups"]:
        assert "nvidia.com/gpu" in group["coveredResources"]
        for fl in group["flavors"]:
            assert fl["name"] == flavor["metadata"]["name"]
            assert [r["name"] for r in fl["resources"]] == group["coveredResources"]  # Kueue requires the same order
            for r in fl["resources"]:
                from aal_k8s.config import parse_quantity

                parse_quantity(str(r["nominalQuota"]))
    assert "namespace" not in flavor["metadata"] and "namespace" not in cq["metadata"]  # cluster-scoped
    assert lq["metadata"]["namespace"] == "aal-k8s" and lq["spec"] == {"clusterQueue": cq["metadata"]["name"]}
    assert "queue_name: gpu" in open(os.path.join(K8S_DIR, "pipeline-config.yaml")).read()
    assert lq["metadata"]["name"] == "gpu"


def test_kustomizations_list_existing_files_and_cover_all_but_the_pipeline_job():
    listed = set()
    for path, doc in _k8s_docs():
        if doc["kind"] != "Kustomization":
            continue
        base = os.path.dirname(path)
        for res in doc["resources"]:
            assert os.path.isfile(os.path.join(K8S_DIR, base, res)), f"{path}: {res} does not exist"
            listed.add(os.path.normpath(os.path.join(base, res)))
    files = {p for p, d in _k8s_docs() if d["kind"] != "Kustomization"}
    # on purpose: the pipeline Job starts training; the dataset PVC is for folders instead of packs
    # never the example Secret: applying the kustomization would overwrite a real one with placeholders
    assert files - listed == {"pipeline-job.yaml", "dataset-pvc.yaml", "store-secret.example.yaml"}


def _role_rules() -> set[tuple[str, str, str]]:
    [role] = _by_kind("Role")
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


def test_the_controller_role_has_exactly_the_least_rights():
    rules = _role_rules()
    assert rules == (
        {("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")}
        | {("", r, v) for r in ("pods", "pods/log", "events") for v in ("get", "list", "watch")}
    )
    [binding] = _by_kind("RoleBinding")
    [job] = [j for j in _by_kind("Job") if j["metadata"]["name"] == "aal-k8s-pipeline"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": job["spec"]["template"]["spec"]["serviceAccountName"],
                                    "namespace": "aal-k8s"}]  # fmt: skip
    assert not any("secrets" in r for _, r, _ in rules)


#: The API each client method needs: (group, resource, verb).
METHOD_RIGHTS = {
    "create_namespaced_job": ("batch", "jobs", "create"),
    "list_namespaced_job": ("batch", "jobs", "list"),
    "watch": ("batch", "jobs", "watch"),
    "read_namespaced_job": ("batch", "jobs", "get"),
    "delete_namespaced_job": ("batch", "jobs", "delete"),
    "list_namespaced_pod": ("", "pods", "list"),
    "read_namespaced_pod_log": ("", "pods/log", "get"),
    "list_namespaced_event": ("", "events", "list"),
}


def test_everything_the_controller_calls_is_allowed_by_the_role(make_backend, cfg, exp, cluster):
    backend = make_backend(cfg)
    a, b = plan_stage("single", cfg, attributes=["square", "ring"])
    backend.submit([a, b], exp)
    cluster.add_pod(job_name(a.experiment, a.run_id), "Pending")
    backend.states([a, b], exp)
    cluster.logs[next(iter(cluster.pods))] = "log\n"
    backend.logs(a.run_id, exp)
    with pytest.raises(KubernetesError, match="no pod yet"):  # b's Job exists, its pod does not
        backend.logs(b.run_id, exp)
    cluster.on_watch = lambda n: [cluster.fail(job_name(s.experiment, s.run_id)) for s in (a, b)]
    backend.wait([a, b], exp)
    backend.cancel([a, b], exp)
    used = {m for m, _ in cluster.calls}
    assert used == set(METHOD_RIGHTS)
    assert {METHOD_RIGHTS[m] for m in used} <= _role_rules()


def test_the_pipeline_job_and_its_config_fit_together():
    [job] = [j for j in _by_kind("Job") if j["metadata"]["name"] == "aal-k8s-pipeline"]
    pod = job["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["args"][0] == "pipeline" and "--config" in c["args"]
    # named, as in the worker Jobs: a runtime that does not know the image's ENTRYPOINT (the
    # k8s-testbed's process kubelet) or an image built with another one still runs aal-k8s
    assert c["command"] == ["aal-k8s"]
    rule = job["spec"]["podFailurePolicy"]["rules"][1]
    assert rule["onExitCodes"]["containerName"] == c["name"] and rule["action"] == "FailJob"
    [cm] = _by_kind("ConfigMap")
    [vol] = [v for v in pod["volumes"] if "configMap" in v]
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
    key = c["args"][c["args"].index("--config") + 1].removeprefix(mount["mountPath"] + "/")
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:  # the example config is a valid config
        f.write(cm["data"][key])
        f.flush()
        cfg = load_config(f.name)
    assert cfg.executor.backend == "k8s" and cfg.store.uri.startswith("s3://")
    [secret] = _by_kind("Secret")
    assert (
        c["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
        and cfg.k8s.store_secret == secret["metadata"]["name"]
    )
    [pvc] = [p for p in _by_kind("PersistentVolumeClaim") if p["metadata"]["name"] == "celeba-data"]
    assert "data_volume_claim: " + pvc["metadata"]["name"] in cm["data"][key]  # the commented alternative
    assert cfg.k8s.service_account in {sa["metadata"]["name"] for sa in _by_kind("ServiceAccount")}
    assert pod["securityContext"]["runAsUser"] == WORKER_UID


def test_the_example_secret_holds_placeholders_only():
    [secret] = _by_kind("Secret")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert secret["stringData"][key].startswith("REPLACE-ME")


def test_minio_uses_the_store_secret_through_secret_key_refs():
    [dep] = _by_kind("Deployment")
    [c] = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    for name, key in (("MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID"), ("MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "aal-k8s-store", "key": key}
    for _, doc in _k8s_docs():  # no literal credential anywhere but the example Secret's placeholders
        for container in ((doc.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers", []):
            for e in container.get("env", []):
                assert "value" not in e or not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", e["name"]), e


# -- Dockerfile ----------------------------------------------------------------------------------
def test_the_dockerfile_builds_the_extension_for_sm80_and_sm90_and_runs_as_the_pods_user():
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    assert re.search(r'TORCH_CUDA_ARCH_LIST="8\.0;9\.0\+PTX"', text)
    assert "--no-build-isolation" in text and re.search(
        r"FROM nvidia/cuda:\$\{CUDA_VERSION\}-devel-ubuntu\$\{UBUNTU_VERSION\} AS build", text
    )
    assert re.search(r"^USER (\d+):(\d+)$", text, re.M).group(1) == str(WORKER_UID)
    assert re.search(r'^ENTRYPOINT \["aal-k8s"\]$', text, re.M)
    ignore = open(os.path.join(ROOT, ".dockerignore")).read().split()
    assert {"!pyproject.toml", "!setup.py", "!csrc/", "!aal_k8s/"} <= set(ignore) and ignore[ignore.index("*")] == "*"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("folder", ["", "kueue"])
def test_kubectl_kustomize_builds_each_kustomization(folder):
    out = subprocess.run(
        ["kubectl", "kustomize", os.path.join(K8S_DIR, folder)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert docs
    for doc in docs:
        if doc["kind"] not in NO_OFFICIAL_SCHEMA:
            validate_strict(doc)
            assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "aal-k8s"


@pytest.mark.parametrize("overrides", list(VARIANTS.values()), ids=list(VARIANTS))
def test_pack_jobs_validate_strictly_and_name_their_members_within_label_limits(overrides):
    from aal_k8s.backends.k8s_manifests import job_runs, pack_manifest
    from aal_k8s.planner import job_packs

    cfg = _cfg(*overrides, "executor.runs_per_job=4", dataset="celeba")  # long ids: 40 attributes, x 5 lambdas
    specs = plan_stage("adversarial", cfg, partners={a: "Male" for a in ("Big_Lips", "Smiling", "Young")})
    packs = job_packs(specs, 4)
    assert [len(p) for p in packs] == [4, 4, 4, 3]
    for pack in packs:
        job = pack_manifest(pack, pack[1:], cfg)  # the first member committed: left out, the name stays the pack's
        validate_strict(job)
        meta = job["metadata"]
        assert meta["name"] == pack_manifest(pack, pack, cfg)["metadata"]["name"] and len(meta["name"]) <= 63
        assert job_runs(job) == [s.run_id for s in pack[1:]]
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert [args[i + 1] for i, a in enumerate(args) if a == "--run"] == [s.run_id for s in pack[1:]]
        assert "aal-k8s/run" not in meta["labels"] and meta["labels"]["aal-k8s/stage"] == "adversarial"
        assert all(len(v) <= 63 for v in meta["labels"].values())
        assert job["spec"]["template"]["metadata"]["labels"]["aal-k8s/pack"] == meta["labels"]["aal-k8s/pack"]
    assert len({pack_manifest(p, p, cfg)["metadata"]["name"] for p in packs}) == len(packs)

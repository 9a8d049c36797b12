"""The k8s backend refuses Jobs that cannot work, before anything is written."""

import pytest

from aal_k8s.backends.k8s_manifests import job_manifest
from aal_k8s.cli import main
from aal_k8s.config import load_config
from aal_k8s.planner import plan_stage

IMAGE = ["--set", "k8s.image=registry.example/aal-k8s:test"]
SHARED = ["--set", "k8s.store_volume_claim=aal-store"]


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (SHARED, "k8s.image is still the placeholder 'ghcr.io/your-org/aal-k8s:0.1.0'"),
        (IMAGE, "is not an s3:// store and no pod can see that folder"),
    ],
    ids=["placeholder image", "folder store without a volume"],
)
@pytest.mark.parametrize("command", [["submit", "--stage", "single"], ["pipeline"]])
def test_k8s_submission_that_cannot_work_is_one_line_exit_2_and_writes_nothing(
    cli_cluster, tmp_path, capsys, command, extra, fragment
):
    store = tmp_path / "store"
    assert main([*command, "--backend", "k8s", "--store", str(store), "--yes", *extra]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not cli_cluster.jobs and not store.exists()


def test_a_dry_run_only_warns_so_manifests_can_be_inspected(tmp_path, capsys):
    assert main(["submit", "--stage", "multi", "--backend", "k8s", "--dry-run", "--store", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "warning: k8s.image is still the placeholder" in err and "warning: store.uri" in err


def test_a_folder_store_on_a_volume_claim_is_mounted_at_its_own_path_in_every_pod(tmp_path):
    cfg = load_config(overrides=[f"store.uri={tmp_path}/store", "k8s.store_volume_claim=aal-store"])
    pod = job_manifest(plan_stage("multi", cfg)[0], cfg)["spec"]["template"]["spec"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "store"]
    assert mount["mountPath"] == f"{tmp_path}/store"
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "aal-store"}} in pod["volumes"]


def test_a_volume_claim_for_an_s3_store_is_a_config_error():
    from aal_k8s.errors import ConfigError

    with pytest.raises(ConfigError, match="k8s.store_volume_claim: only for a folder store.uri"):
        load_config(overrides=["store.uri=s3://bucket/aal", "k8s.store_volume_claim=aal-store"])


def test_a_pod_template_patch_adds_affinity_runtime_class_and_cost_labels_and_keeps_the_run_labels(tmp_path):
    patch = {
        "metadata": {"labels": {"team": "vision"}, "annotations": {"cost-center": "cv-42"}},
        "spec": {
            "runtimeClassName": "nvidia",
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]}}},
            "enableServiceLinks": None,  # null deletes
        },
    }  # fmt: skip
    cfg = load_config(overrides=[f"store.uri={tmp_path}"])
    cfg.k8s.pod_template_patch = patch
    job = job_manifest(plan_stage("multi", cfg)[0], cfg)
    template = job["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "vision" and "aal-k8s/run" in template["metadata"]["labels"]
    assert template["metadata"]["annotations"] == {"cost-center": "cv-42"}
    assert template["spec"]["runtimeClassName"] == "nvidia" and template["spec"]["affinity"] == patch["spec"]["affinity"]
    assert "enableServiceLinks" not in template["spec"] and template["spec"]["containers"][0]["name"]
    from k8s_schema import validate_strict

    validate_strict(job)


def test_a_pod_template_patch_may_not_replace_the_containers_and_names_every_problem():
    from aal_k8s.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(overrides=['k8s.pod_template_patch={"spec": {"containers": []}, "status": {}}'])
    assert "k8s.pod_template_patch.spec.containers: not patchable" in e.value.message
    assert "k8s.pod_template_patch: unknown field(s) ['status']" in e.value.message


def _pod(out: str) -> dict:
    import yaml

    return next(d for d in yaml.safe_load_all(out) if d)["spec"]["template"]["spec"]


def test_by_default_each_pod_streams_the_pack_into_memory_sized_from_the_pack_with_no_host_path(tmp_path, capsys):
    argv = ["submit", "--stage", "multi", "--dataset", "celeba", "--backend", "k8s", "--dry-run", "--store", str(tmp_path)]
    assert main(argv) == 0
    pod = _pod(capsys.readouterr().out)
    [c] = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    # CelebA's pack: 202,599 images x 218 x 178 x 3 bytes = 23.6 GB = 22 GiB rounded up, on top of 48Gi
    assert env["AAL_K8S_PACK_TO"] == "memory" and "AAL_K8S_CACHE" not in env
    assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"] == "70Gi"  # still Guaranteed
    assert c["resources"]["requests"]["ephemeral-storage"] == "2Gi"  # /tmp holds no pack
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}} in pod["volumes"]
    assert not any("hostPath" in v or "persistentVolumeClaim" in v for v in pod["volumes"])  # restricted PSS
    # with a node cache the pack is on disk there: neither /tmp nor memory grows
    assert main([*argv, "--set", "k8s.cache_host_path=/mnt/aal-cache"]) == 0
    [c] = _pod(capsys.readouterr().out)["containers"]
    assert {e["name"]: e.get("value") for e in c["env"]}["AAL_K8S_PACK_TO"] == "disk"
    assert c["resources"]["requests"]["ephemeral-storage"] == "2Gi" and c["resources"]["requests"]["memory"] == "48Gi"
    # on disk without a cache volume, /tmp holds it: 22 + 2 GiB of node disk, memory as set
    assert main([*argv, "--set", "dataset.pack_to=disk", "--set", "k8s.memory_limit=", "--set", "k8s.memory_request=40G"]) == 0
    [c] = _pod(capsys.readouterr().out)["containers"]
    assert c["resources"]["requests"]["ephemeral-storage"] == "24Gi" and c["resources"]["requests"]["memory"] == "40G"
    # streamed into memory with a request that is no whole number of GiB
    assert main([*argv, "--set", "k8s.memory_limit=", "--set", "k8s.memory_request=40G"]) == 0
    [c] = _pod(capsys.readouterr().out)["containers"]
    assert c["resources"]["requests"]["memory"] == str(40 * 10**9 + 22 * 2**30) and "memory" not in c["resources"]["limits"]


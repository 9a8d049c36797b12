"""End-to-end fixtures: the real control plane (tests/k8s_testbed.py), the SeaweedFS S3 server
(tests/s3_testing.py), and per test a namespace, a bucket and the CLI pointed at both."""

from __future__ import annotations

import importlib.util
import os

import pytest
from k8s_testbed import namespace, testbed  # noqa: F401
from s3_testing import FAKE_KEY_ID, FAKE_SECRET, REPO, make_bucket, seaweed_endpoint  # noqa: F401


def _tiny() -> list[str]:
    spec = importlib.util.spec_from_file_location("_aal_root_conftest", os.path.join(REPO, "tests", "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return list(mod.TINY)


TINY = _tiny()

#: Pods fit the stand-in node (16 CPU, 64Gi) two at a time, CPU-only, one thread each.
K8S = [
    "executor.backend=k8s",
    "k8s.image=registry.example/aal-k8s:e2e",
    "k8s.gpus=0",
    "k8s.cpu_request=1",
    "k8s.cpu_limit=",
    "k8s.memory_request=256Mi",
    "k8s.memory_limit=",
    "k8s.shm_size=64Mi",
    "k8s.ephemeral_storage=",  # the stand-in node reports no ephemeral-storage: a request is unschedulable
    "k8s.api_backoff_seconds=0.2",
    "k8s.api_backoff_max_seconds=2",
]


class E2E:
    """One test's world: namespace ``ns``, bucket, store URI and the ``--set`` list of its config."""

    def __init__(self, testbed, ns, bucket: str, capsys):
        self.testbed, self.ns, self.bucket, self.capsys = testbed, ns, bucket, capsys
        self.store = f"s3://{bucket}/aal"

    def sets(self, *extra: str, tiny=TINY) -> list[str]:
        return [x for o in self.config_items(*extra, tiny=tiny) for x in ("--set", o)]

    def cli(self, *argv: str) -> tuple[int, str, str]:
        """``aal-k8s argv`` in this process: (exit code, stdout, stderr)."""
        from aal_k8s.cli import main

        self.capsys.readouterr()
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err

    def config_items(self, *extra: str, tiny=TINY) -> list[str]:
        return [*tiny, *K8S, f"k8s.namespace={self.ns.name}", f"store.uri={self.store}", *extra]

    def config(self, *extra: str, tiny=TINY):
        from aal_k8s.config import load_config

        return load_config(overrides=self.config_items(*extra, tiny=tiny), dataset="synthetic")

    def experiment(self, cfg=None):
        from aal_k8s.store import ExperimentStore, open_store

        cfg = cfg or self.config()
        return ExperimentStore(open_store(cfg.store.uri, cfg.store), cfg.experiment_name)


@pytest.fixture
def e2e(testbed, namespace, seaweed_endpoint, monkeypatch, tmp_path, capsys):  # noqa: F811
    # the CLI side: the cluster-admin kubeconfig, the S3 server with the fake pair (no session token)
    for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
              "AAL_K8S_STORE_OPTIONS", "AAL_K8S_ATTEMPT", "POD_NAME"):  # fmt: skip
        monkeypatch.delenv(k, raising=False)
    env = {"KUBECONFIG": testbed.kubeconfig, "AWS_ENDPOINT_URL": seaweed_endpoint, "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # the client reads KUBECONFIG once, when it is first imported (a CLI process starts with it set)
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", testbed.kubeconfig)
    monkeypatch.chdir(tmp_path)
    return E2E(testbed, namespace, make_bucket(seaweed_endpoint), capsys)

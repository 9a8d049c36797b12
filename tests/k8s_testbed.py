"""A real Kubernetes control plane for the end-to-end tests: the k8s-testbed (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler v1.36 on loopback, and a stand-in kubelet that runs each
pod's command as a local process), started once per session.

Where it is: ``AAL_K8S_TESTBED_DIR`` (the folder with ``up.sh``), else ``../shared/k8s-testbed``
beside this checkout (or beside the folder holding it, for git worktrees). Its state goes to
``TESTBED`` (default ``/tmp/aal-testbed``). A testbed already answering there is reused and left
running; one started here is stopped at the end. Without the folder the tests skip, except on CI
(CI=true), where they fail.

Pods inherit PATH from ``up.sh``: this Python's folder comes first, so a pod's ``aal-k8s worker``
is this checkout's code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest
from s3_testing import FAKE_KEY_ID, FAKE_SECRET, REPO, unavailable

TESTBED_ENV = "AAL_K8S_TESTBED_DIR"


def testbed_dir() -> str | None:
    if os.environ.get(TESTBED_ENV):  # given: that one or none
        candidates = [os.environ[TESTBED_ENV]]
    else:
        parent = os.path.dirname(REPO)
        candidates = [os.path.join(parent, "shared", "k8s-testbed"),
                      os.path.join(os.path.dirname(parent), "shared", "k8s-testbed")]  # fmt: skip
    return next((c for c in candidates if os.path.isfile(os.path.join(c, "up.sh"))), None)


@dataclass
class Testbed:
    folder: str  # the k8s-testbed folder (up.sh, down.sh)
    state: str  # its state folder (TESTBED): kubeconfig, logs, run/<component>.pid
    kubeconfig: str  # cluster-admin
    env: dict  # the environment up.sh ran with

    def api(self, kubeconfig: str | None = None):
        from kubernetes import client, config

        return client.ApiClient(config.new_client_from_config(kubeconfig or self.kubeconfig).configuration)


def _answers(kubeconfig: str) -> bool:
    if not os.path.isfile(kubeconfig):
        return False
    try:
        from kubernetes import client, config

        api = config.new_client_from_config(kubeconfig)
        client.CoreV1Api(api).read_node("local-gpu-0", _request_timeout=5)
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def testbed():
    folder = testbed_dir()
    if folder is None:
        unavailable(f"no Kubernetes testbed (k8s-testbed/up.sh): set {TESTBED_ENV} to its folder")
    state = os.environ.get("TESTBED") or "/tmp/aal-testbed"
    here = os.path.dirname(sys.executable)
    env = {**os.environ, "TESTBED": state, "PYTHON": sys.executable, "MAX_CONCURRENCY": "2",
           "PATH": here + os.pathsep + os.environ.get("PATH", "")}  # fmt: skip
    kubeconfig = os.path.join(state, "kubeconfig")
    started = not _answers(kubeconfig)
    if started:
        r = subprocess.run(["bash", os.path.join(folder, "up.sh")], env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
        if r.returncode != 0:
            pytest.fail(f"k8s-testbed/up.sh failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    try:
        yield Testbed(folder, state, kubeconfig, env)
    finally:
        if started:
            subprocess.run(["bash", os.path.join(folder, "down.sh")], env=env, timeout=120)


@dataclass
class Namespace:
    name: str
    core: object
    batch: object
    rbac: object


@pytest.fixture
def namespace(testbed, seaweed_endpoint):
    """A fresh namespace holding the store Secret (the fake key pair and the SeaweedFS endpoint, as
    a real cluster's Secret would hold the S3 endpoint); deleted afterwards with all it holds."""
    from kubernetes import client

    api = testbed.api()
    core, batch, rbac = client.CoreV1Api(api), client.BatchV1Api(api), client.RbacAuthorizationV1Api(api)
    name = f"aal-e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_secret(name, {
        "metadata": {"name": "aal-k8s-store"},
        "stringData": {"AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
                       "AWS_ENDPOINT_URL": seaweed_endpoint, "AWS_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"},
    })  # fmt: skip
    try:
        yield Namespace(name, core, batch, rbac)
    finally:
        core.delete_namespace(name, propagation_policy="Background")


__all__ = ["REPO", "Namespace", "Testbed", "namespace", "testbed", "testbed_dir"]

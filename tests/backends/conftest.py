"""Fixtures for the Kubernetes backend: an in-memory API (fake_k8s), a config whose store is a
temporary folder, and a backend wired to the fake with recorded sleeps and a fixed clock."""

from __future__ import annotations

import io

import pytest
from fake_k8s import FakeCluster

from aal_k8s.backends.k8s import KubernetesBackend
from aal_k8s.config import load_config
from aal_k8s.store import ExperimentStore, open_store

WALL = 1_750_000_000.0  # the fixed "now" of Retry-After dates


@pytest.fixture
def cluster():
    return FakeCluster()


@pytest.fixture
def k8s_overrides(tmp_path) -> list[str]:
    return [f"store.uri={tmp_path / 'store'}", "executor.backend=k8s", "k8s.image=registry.example/aal-k8s:test",
            "k8s.store_volume_claim=aal-store"]  # the folder store, as pods would see it through a PVC


@pytest.fixture
def cfg(k8s_overrides):
    return load_config(overrides=k8s_overrides, dataset="synthetic")


@pytest.fixture
def exp(cfg):
    return ExperimentStore(open_store(cfg.store.uri), cfg.experiment_name)


class Recorder:
    def __init__(self):
        self.sleeps: list[float] = []
        self.log = io.StringIO()
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def rec():
    return Recorder()


@pytest.fixture
def make_backend(cluster, rec):
    def make(cfg):
        return KubernetesBackend(
            cfg, apis=cluster.apis(), sleep=rec.sleep, clock=rec.clock, wall=lambda: WALL, log=rec.log
        )

    return make


@pytest.fixture
def backend(make_backend, cfg):
    return make_backend(cfg)


@pytest.fixture
def cli_cluster(cluster, monkeypatch):
    """The CLI's k8s backend talks to ``cluster`` and never really sleeps."""
    monkeypatch.setattr("aal_k8s.backends.k8s.load_apis", lambda k: cluster.apis())
    monkeypatch.setattr("aal_k8s.backends.k8s.SLEEP", cluster.sleeps.append)
    return cluster

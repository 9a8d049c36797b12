import pytest

from aal_k8s.errors import StoreError
from aal_k8s.runspec import RunSpec
from aal_k8s.store import ExperimentStore, LocalStore, open_store


def _spec():
    return RunSpec(experiment="e", stage="single", dataset="synthetic", primary=("square",), attr_index=(1,))


def test_round_trip_listing_and_delete(tmp_path):
    s = LocalStore(str(tmp_path))
    s.put_bytes("a/b/c.bin", b"xyz")
    s.put_bytes("a/d.json", b"{}")
    assert s.get_bytes("a/b/c.bin") == b"xyz" and s.exists("a/d.json")
    assert s.list("a") == ["a/b/c.bin", "a/d.json"]
    s.delete("a/d.json")
    assert not s.exists("a/d.json")
    with pytest.raises(StoreError, match="a/d.json: not found"):
        s.get_bytes("a/d.json")


def test_keys_cannot_escape_the_root(tmp_path):
    with pytest.raises(StoreError, match="escapes"):
        LocalStore(str(tmp_path)).put_bytes("../x", b"")


def test_open_store_picks_by_scheme(tmp_path):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    with pytest.raises(StoreError, match="unsupported scheme"):
        open_store("gopher://x")


class _WriteLog(LocalStore):
    """A local store that notes every write, and whether the run was committed at that moment."""

    def __init__(self, root, run_id):
        super().__init__(root)
        self.run_id, self.writes = run_id, []

    def _note(self, key):
        self.writes.append((key, ExperimentStore(LocalStore(self.root), "e").is_committed(self.run_id)))

    def put_bytes(self, key, data):
        self._note(key)
        return super().put_bytes(key, data)

    def put_if_absent(self, key, data):
        self._note(key)
        return super().put_if_absent(key, data)


def test_commit_record_lists_artifacts_and_is_written_last(tmp_path):
    spec = _spec()
    store = _WriteLog(str(tmp_path), spec.run_id)
    exp = ExperimentStore(store, "e")
    assert not exp.is_committed(spec.run_id)
    artifacts = {"best.safetensors": b"weights", "history.json": b"[]"}
    rec = exp.commit_run(spec, artifacts, {"val_acc": {"square": 0.9}})
    assert exp.is_committed(spec.run_id)
    assert rec["artifacts"]["best.safetensors"]["size"] == 7
    assert exp.read_artifact(spec.run_id, "best.safetensors") == b"weights"
    # every artifact is in place before the record that makes the run count as complete
    keys = [k for k, _ in store.writes]
    assert keys[-1] == exp.run_key(spec.run_id, "metrics.json")
    assert sorted(keys[:-1]) == sorted(exp.attempt_key(spec.run_id, name) for name in artifacts)
    assert not any(committed for _, committed in store.writes)


def test_a_corrupted_artifact_fails_its_checksum_naming_the_key(tmp_path):
    exp = ExperimentStore(LocalStore(str(tmp_path)), "e")
    spec = _spec()
    exp.commit_run(spec, {"best.safetensors": b"weights"}, {})
    key = exp.artifact_key(spec.run_id, "best.safetensors")
    assert key == exp.key("runs", spec.run_id, "attempts", exp.attempt, "best.safetensors")
    exp.store.put_bytes(key, b"weightz")
    with pytest.raises(StoreError, match=f"{key}: checksum mismatch"):
        exp.read_artifact(spec.run_id, "best.safetensors")


def test_failures_are_hidden_once_the_run_commits(tmp_path):
    exp = ExperimentStore(LocalStore(str(tmp_path)), "e")
    spec = _spec()
    exp.record_failure(spec.run_id, "boom", 1)
    assert exp.read_failure(spec.run_id)["message"] == "boom"
    exp.commit_run(spec, {}, {})
    assert exp.read_failure(spec.run_id) is None

"""Issue 19 in the store: crash leftovers are cleaned on the next touch and by `aal-k8s gc`; a
commit whose every answer was lost still counts as ours."""

from __future__ import annotations

import io
import os
import time

import pytest

from aal_k8s.cli import main
from aal_k8s.config import StoreConfig
from aal_k8s.runspec import RunSpec
from aal_k8s.store import ExperimentStore, open_store
from aal_k8s.store.layout import TEMP_MAX_AGE
from aal_k8s.store.s3 import S3Store
from aal_k8s.worker import execute


def _spec():
    return RunSpec(experiment="e", stage="single", dataset="synthetic", primary=("square",), attr_index=(1,))


def _age(path) -> None:
    old = time.time() - TEMP_MAX_AGE - 60
    os.utime(path, (old, old))


def _crashed_before_cleanup(root, monkeypatch):
    """A committed run whose winner was killed right after the commit record: two attempts'
    checkpoints, the loser's weights and an old temp file are still there."""
    loser = ExperimentStore(open_store(str(root)), "e", attempt="loser")
    spec = _spec()
    loser.write_spec(spec)
    loser.write_checkpoint(spec.run_id, 1, b"L" * 100)
    loser.store.put_bytes(loser.attempt_key(spec.run_id, "best.safetensors"), b"loser weights")
    winner = ExperimentStore(open_store(str(root)), "e", attempt="winner")
    winner.write_checkpoint(spec.run_id, 1, b"W" * 100)
    with monkeypatch.context() as m:  # the kill
        m.setattr(ExperimentStore, "clean_committed", lambda self, run_id, record=None: {})
        winner.commit_run(spec, {"best.safetensors": b"winner weights"}, {})
    temp = root / "e" / "runs" / spec.run_id / "attempts" / "winner" / ".part-abc123"
    temp.write_bytes(b"T" * 50)
    _age(temp)
    return winner, spec, temp


def _files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_the_next_worker_on_a_committed_run_removes_the_crash_leftovers_idempotently(tmp_path, monkeypatch):
    exp, spec, temp = _crashed_before_cleanup(tmp_path, monkeypatch)
    log = io.StringIO()
    assert execute(str(tmp_path), "e", spec.run_id, log=log) == 0
    assert "already committed, nothing to do; removed 6 leftover files" in log.getvalue()
    run = f"e/runs/{spec.run_id}"
    kept = [f for f in _files(tmp_path) if not f.endswith("/worker.log")]  # each attempt's log stays
    assert kept == [f"{run}/attempts/winner/best.safetensors", f"{run}/metrics.json", f"{run}/spec.json"]
    log = io.StringIO()
    assert execute(str(tmp_path), "e", spec.run_id, log=log) == 0
    assert log.getvalue().strip().endswith("already committed, nothing to do")
    assert exp.read_artifact(spec.run_id, "best.safetensors") == b"winner weights"


def test_a_young_temp_file_may_be_a_write_in_progress_and_stays(tmp_path, monkeypatch):
    exp, spec, temp = _crashed_before_cleanup(tmp_path, monkeypatch)
    os.utime(temp)  # just written
    gone = exp.clean_committed(spec.run_id)
    assert temp.exists() and not any(".part-" in k for k in gone)


def test_gc_is_a_dry_run_that_shows_bytes_and_deletes_only_with_delete(tmp_path, monkeypatch, capsys):
    _crashed_before_cleanup(tmp_path, monkeypatch)
    stray = tmp_path / "e" / "final" / "models" / "square-0123456789abcdef.safetensors"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"S" * 10)  # no manifest: unknown which files are published, so kept
    before = _files(tmp_path)
    stale = [f for f in before if "/attempts/" in f and not f.endswith("winner/best.safetensors") and ".part-" not in f]
    size = sum(os.path.getsize(tmp_path / f) for f in stale)  # checkpoints, their records, the loser's weights
    argv = ["gc", "--store", str(tmp_path), "--experiment", "e"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"committed runs' checkpoints and losing attempts: 5 files, {size} bytes" in out
    assert "temp files: 1 files, 50 bytes" in out
    assert f"6 files, {size + 50} bytes could be deleted: run again with --delete (dry run, nothing deleted)" in out
    assert _files(tmp_path) == before
    assert main([*argv, "--delete"]) == 0
    assert f"deleted 6 files, {size + 50} bytes" in capsys.readouterr().out
    assert len(_files(tmp_path)) == len(before) - 6 and stray.exists()
    assert main(argv) == 0
    assert "nothing to collect" in capsys.readouterr().out


def test_gc_finds_final_model_files_the_manifest_does_not_name(tiny_cfg, tmp_path, capsys):
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cli"))
    from test_download_predict import build_model_set

    exp, _ = build_model_set(tiny_cfg)
    stray = exp.key("final", "models", "square-0123456789abcdef.safetensors")
    exp.store.put_bytes(stray, b"S" * 10)  # a publication killed before its manifest
    assert main(["gc", "--store", tiny_cfg.store.uri, "--experiment", "synthetic", "--delete"]) == 0
    out = capsys.readouterr().out
    assert "unpublished final model files: 1 files, 10 bytes" in out and not exp.store.exists(stray)


def test_final_publishes_under_new_names_and_a_crash_before_the_manifest_keeps_the_old_set(
    tiny_overrides, tmp_path, monkeypatch
):
    import json
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cli"))
    from test_download_predict import build_model_set

    from aal_k8s.config import load_config
    from aal_k8s.modelset import download_final

    exp, _ = build_model_set(load_config(overrides=tiny_overrides, dataset="synthetic"))
    old = json.loads(exp.store.get_bytes(exp.key("final", "manifest.json")))
    old_bytes = {m["file"]: exp.store.get_bytes(exp.key("final", m["file"])) for m in old["models"]}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the publisher dies after its model files, before the manifest

    monkeypatch.setattr(ExperimentStore, "put_sealed", killed)
    with pytest.raises(KeyboardInterrupt):  # another set: other runs (seed 1), other model files
        build_model_set(load_config(overrides=[*tiny_overrides, "train.seed=1"], dataset="synthetic"))
    monkeypatch.undo()
    files = exp.store.list(exp.key("final", "models"))
    assert len(files) == 2 * len(old_bytes)  # the new files sit beside the published ones
    for f, data in old_bytes.items():
        assert exp.store.get_bytes(exp.key("final", f)) == data  # nothing published was rewritten
    download_final(exp, str(tmp_path / "dl"))  # the old set still verifies end to end


@pytest.mark.slow
def test_a_commit_whose_every_answer_was_lost_still_counts_as_ours(s3_uri, fault_proxy):
    opts = StoreConfig(max_attempts=3, connect_timeout=2.0, read_timeout=5.0, endpoint_url=fault_proxy.url)
    exp = ExperimentStore(S3Store(s3_uri, opts), "e", attempt="solo")
    spec = _spec()
    fault_proxy.inject("reset_after", times=99, method="PUT", path="metrics.json")  # created; no answer ever
    rec = exp.commit_run(spec, {"best.safetensors": b"w"}, {})
    assert fault_proxy.outcomes("reset_after") >= 3
    assert rec["attempt"] == "solo" and exp.read_artifact(spec.run_id, "best.safetensors") == b"w"


def test_gc_on_an_s3_store_lists_a_committed_runs_leftovers_with_their_sizes(s3_uri, capsys, monkeypatch):
    loser = ExperimentStore(open_store(s3_uri), "e", attempt="loser")
    spec = _spec()
    loser.write_spec(spec)
    loser.write_checkpoint(spec.run_id, 1, b"L" * 100)
    winner = ExperimentStore(open_store(s3_uri), "e", attempt="winner")
    with monkeypatch.context() as m:  # the winner is killed between its commit and its cleanup
        m.setattr(ExperimentStore, "clean_committed", lambda self, run_id, record=None: {})
        winner.commit_run(spec, {"best.safetensors": b"winner weights"}, {})
    size = sum(winner.leftovers(spec.run_id).values())
    assert set(winner.leftovers(spec.run_id)) == {
        winner.checkpoint_key(spec.run_id, 1, "loser"), winner.checkpoint_key(spec.run_id, 1, "loser", ext="json")
    }
    assert main(["gc", "--store", s3_uri, "--experiment", "e"]) == 0
    assert f"2 files, {size} bytes could be deleted" in capsys.readouterr().out
    assert main(["gc", "--store", s3_uri, "--experiment", "e", "--delete"]) == 0
    assert winner.leftovers(spec.run_id) == {} and winner.read_artifact(spec.run_id, "best.safetensors") == b"winner weights"


def test_republishing_keeps_the_previous_set_for_its_readers_and_drops_older_ones(tiny_overrides):
    import json
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cli"))
    from test_download_predict import build_model_set

    from aal_k8s.config import load_config

    def publish(seed):
        exp, _ = build_model_set(load_config(overrides=[*tiny_overrides, f"train.seed={seed}"], dataset="synthetic"))
        return exp, {m["file"] for m in json.loads(exp.store.get_bytes(exp.key("final", "manifest.json")))["models"]}

    _, first = publish(0)
    _, second = publish(1)
    exp, third = publish(2)
    on_store = {k.removeprefix(exp.key("final") + "/") for k in exp.store.list(exp.key("final", "models"))}
    assert on_store == second | third and not first & on_store

"""Issue 19 at the command line: no secret is ever printed, bad input is one line and exit 2 with
nothing written."""

import pytest

from aal_k8s.cli import main
from aal_k8s.errors import scrub
from aal_k8s.worker import execute

SECRET_URL = "http://user:hunter2pw@minio .storage:9000"


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_malformed_endpoint_with_credentials_is_one_scrubbed_line_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", SECRET_URL)
    assert main(["status", "--store", "s3://b/x"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "hunter2pw" not in line and "user:" not in line
    assert "cannot create the S3 client" in line and "http://***@minio" in line


def test_a_worker_with_a_malformed_endpoint_logs_one_scrubbed_line_and_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", SECRET_URL)
    assert main(["worker", "--store", "s3://b/x", "--experiment", "e", "--run", "r1"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "hunter2pw" not in line and "run r1: failed: store s3://b/x: cannot create the S3 client" in line


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("store.region=bad region!", "store.region: 'bad region!' is not a region name"),
        ("store.endpoint_url=http://bad host:9000", "store.endpoint_url: 'http://bad host:9000' is not a URL"),
        ("store.endpoint_url=http://host:99999", "store.endpoint_url: 'http://host:99999' is not a URL"),
    ],
)
def test_a_malformed_region_or_endpoint_setting_is_a_config_error(override, fragment, tmp_path, capsys):
    assert main(["status", "--store", "s3://b/x", "--set", override]) == 2
    assert fragment in _one_line(capsys.readouterr().err)


def test_the_worker_scrubs_secrets_from_its_log_and_its_failure_record(monkeypatch, tmp_path):
    """A crash whose message quotes an env secret and a URL's password reaches neither the log
    nor failure.json."""
    import io

    import aal_k8s.worker as worker
    from aal_k8s.store import ExperimentStore

    def boom(*a, **k):
        raise RuntimeError("request signed with sekrit-value-42 via http://u:p@host/")

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-value-42")
    monkeypatch.setattr(worker, "_train_and_commit", boom)
    monkeypatch.setattr(ExperimentStore, "read_spec", lambda self, run_id: _FakeSpec(run_id))
    log = io.StringIO()
    assert execute(str(tmp_path), "e", "r1", log=log) == 1
    [stored_log] = (tmp_path / "e/runs/r1/attempts").glob("*/worker.log")  # the attempt's log copy
    text = log.getvalue() + (tmp_path / "e/runs/r1/failure.json").read_text() + stored_log.read_text()
    assert "sekrit-value-42" not in text and "u:p@" not in text and "***" in text


class _FakeSpec:
    def __init__(self, run_id):
        self.run_id = run_id


def test_scrub_removes_userinfo_env_secrets_and_signatures(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok-abcdef")
    out = scrub("GET https://k:s@h/x?X-Amz-Signature=deadbeef token tok-abcdef")
    assert out == "GET https://***@h/x?X-Amz-Signature=*** token ***"


# -- corruption that used to be used silently --------------------------------------------------
import json  # noqa: E402
import os  # noqa: E402

from test_download_predict import ATTRS, build_model_set  # noqa: E402

from aal_k8s.checksums import seal  # noqa: E402
from aal_k8s.errors import CorruptRecordError  # noqa: E402
from aal_k8s.store import ExperimentStore, open_store  # noqa: E402


def _flags(overrides):
    return [x for o in overrides for x in ("--set", o)]


def _edit_json(path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=1))


def test_an_edited_mean_in_the_stored_manifest_is_refused_by_download(tiny_cfg, tiny_overrides, tmp_path, capsys):
    exp, _ = build_model_set(tiny_cfg)
    stored = tmp_path / "store" / "synthetic" / "final" / "manifest.json"
    _edit_json(stored, lambda m: m["input"]["mean"].__setitem__(0, 0.46))
    dest = tmp_path / "dl"
    assert main(["download", "--to", str(dest), *_flags(tiny_overrides)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{stored}: checksum mismatch (the final model set manifest was altered" in line
    assert not (dest / "manifest.json").exists()


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["input"]["std"].__setitem__(1, 0.3),
        lambda m: m["input"].__setitem__("image_size", 17),
        lambda m: m["output"].__setitem__("threshold", 0.4),
        lambda m: m["models"][0].__setitem__("test_acc", 0.99),
        lambda m: m.pop("manifest_sha256"),
    ],
    ids=["std", "image_size", "threshold", "accuracy", "no checksum"],
)
def test_an_edited_downloaded_manifest_is_refused_by_predict(change, tiny_cfg, tiny_overrides, tmp_path, capsys):
    build_model_set(tiny_cfg)
    dest = tmp_path / "dl"
    assert main(["download", "--to", str(dest), *_flags(tiny_overrides)]) == 0
    _edit_json(dest / "manifest.json", change)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(img)
    capsys.readouterr()
    assert main(["predict", "--models", str(dest), str(img)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(dest / "manifest.json") in line and ("checksum mismatch" in line or "has no manifest_sha256" in line)


def _reduced(cfg):
    """Committed single-task runs, a final model set, and the sealed reduce summary naming them."""
    from aal_k8s.planner import plan_stage
    from aal_k8s.reduce import Choice, ReduceOutput, write_reduce

    exp, _ = build_model_set(cfg)
    out = ReduceOutput(dataset="synthetic", attributes=ATTRS)
    for spec in plan_stage("single", cfg):
        a = spec.primary[0]
        out.single_val[a] = out.single_test[a] = 0.5
        out.final[a] = Choice(a, "single", spec.run_id, None, None, 0.5, 0.5)
    write_reduce(exp, out)
    return exp


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda s: s["single_val"].__setitem__("square", 0.99), "checksum mismatch (the reduce summary was altered"),
        (lambda s: s["final"]["square"].__setitem__("run_id", 7), "checksum mismatch (the reduce summary was altered"),
        (lambda s: s.pop("summary_sha256"), "reduce summary has no summary_sha256"),
    ],
    ids=["accuracy", "run_id", "no checksum"],
)
def test_an_edited_reduce_summary_is_refused_by_final_and_report(change, fragment, tiny_cfg, tiny_overrides, tmp_path, capsys):
    _reduced(tiny_cfg)
    summary = tmp_path / "store" / "synthetic" / "reduce" / "summary.json"
    _edit_json(summary, change)
    for cmd in ("final", "report"):
        capsys.readouterr()
        assert main([cmd, *_flags(tiny_overrides)]) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"{summary}: {fragment}" in line or f"{summary}: checksum mismatch" in line


def test_final_names_a_chosen_run_that_is_not_committed(tiny_cfg, tiny_overrides, tmp_path, capsys):
    from aal_k8s.reduce import SUMMARY, SUMMARY_SHA

    exp = _reduced(tiny_cfg)
    summary = exp.get_sealed(*SUMMARY, field=SUMMARY_SHA, what="x")
    summary["final"]["square"]["run_id"] = "sin-a01-00000000"
    exp.put_sealed(*SUMMARY, obj=summary, field=SUMMARY_SHA)  # re-sealed on purpose: a consistent but stale summary
    assert main(["final", *_flags(tiny_overrides)]) == 2
    assert "run sin-a01-00000000 (the final choice for 'square') is not committed" in _one_line(capsys.readouterr().err)


def test_a_commit_record_without_its_checksum_is_not_trusted(tmp_path):
    from aal_k8s.config import load_config
    from aal_k8s.planner import plan_stage

    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}"])
    spec = plan_stage("single", cfg)[0]
    exp = ExperimentStore(open_store(str(tmp_path)), "e")
    exp.commit_run(spec, {"best.safetensors": b"w"}, {"val_acc": {"square": 0.5}})
    path = tmp_path / "e" / "runs" / spec.run_id / "metrics.json"
    _edit_json(path, lambda r: (r.pop("record_sha256"), r["val_acc"].__setitem__("square", 0.9)))
    with pytest.raises(CorruptRecordError, match=r"metrics.json: commit record has no record_sha256"):
        exp.read_metrics(spec.run_id)
    assert not exp.is_committed(spec.run_id)


def test_a_truncated_commit_record_is_named_by_status_and_reduce_and_submit_retrains_the_run(
    tiny_overrides, tmp_path, capsys
):
    argv = ["--attrs", "square", *_flags(tiny_overrides)]
    assert main(["submit", "--stage", "single", *argv]) == 0
    [record] = list((tmp_path / "store" / "synthetic" / "runs").glob("*/metrics.json"))
    run_id = record.parent.name
    good = record.read_bytes()
    record.write_bytes(good[: len(good) // 2])  # a writer killed half-way, or a broken copy
    capsys.readouterr()

    assert main(["status", "--stage", "single", *_flags(tiny_overrides)]) == 0
    out = capsys.readouterr().out
    assert f"single {run_id}: {record}: commit record is not valid JSON (truncated or corrupted)" in out

    assert main(["reduce", *_flags(tiny_overrides)]) == 0
    summary = json.loads((tmp_path / "store" / "synthetic" / "reduce" / "summary.json").read_text())
    assert run_id in summary["missing"]["single"] and "truncated" in summary["failed"][run_id]

    capsys.readouterr()
    assert main(["submit", "--stage", "single", *argv]) == 0
    err = capsys.readouterr().err
    assert f"run {run_id}: {record}: commit record is not valid JSON" in err and "moved to" in err
    assert "already complete" not in err
    exp = ExperimentStore(open_store(str(tmp_path / "store")), "synthetic")
    assert exp.is_committed(run_id) and exp.read_metrics(run_id)["val_acc"]  # retrained and committed again
    [aside] = os.listdir(record.parent / "quarantine")
    assert (record.parent / "quarantine" / aside).read_bytes() == good[: len(good) // 2]


def test_quarantine_moves_only_a_record_that_fails_verification_and_a_commit_then_succeeds(tmp_path):
    from aal_k8s.config import load_config
    from aal_k8s.planner import plan_stage

    cfg = load_config(dataset="synthetic", overrides=[f"store.uri={tmp_path}"])
    spec = plan_stage("single", cfg)[0]
    exp = ExperimentStore(open_store(str(tmp_path)), "e", attempt="a1")
    exp.commit_run(spec, {"best.safetensors": b"w"}, {"val_acc": {"square": 0.5}})
    assert exp.quarantine_record(spec.run_id) is None and exp.is_committed(spec.run_id)  # valid: untouched
    record = tmp_path / "e" / "runs" / spec.run_id / "metrics.json"
    record.write_bytes(record.read_bytes()[:40])
    again = ExperimentStore(open_store(str(tmp_path)), "e", attempt="a2")
    won = again.commit_run(spec, {"best.safetensors": b"w2"}, {"val_acc": {"square": 0.6}})
    assert won["attempt"] == "a2" and again.read_metrics(spec.run_id)["val_acc"] == {"square": 0.6}
    assert len(os.listdir(record.parent / "quarantine")) == 1


# -- one-line errors instead of tracebacks (exit 2, nothing written) ---------------------------
@pytest.mark.parametrize(
    "config_text, overrides, fragment",
    [
        ("dataset: 5\n", [], "dataset: expected a mapping, got 5"),
        ("dataset: [1, 2]\n", [], "dataset: expected a mapping, got [1, 2]"),
        (None, ["dataset=5"], "dataset: expected a mapping, got 5"),
        (b"train:\n  lr: 0.1 \xff\n", [], "is not UTF-8 text (byte 17)"),
    ],
    ids=["dataset 5", "dataset list", "--set dataset=5", "not utf-8"],
)
def test_a_malformed_config_is_one_line_exit_2_and_writes_nothing(config_text, overrides, fragment, tmp_path, capsys):
    argv = ["submit", "--stage", "single", "--store", str(tmp_path / "store"), *_flags(overrides)]
    if config_text is not None:
        cfg = tmp_path / "exp.yaml"
        cfg.write_bytes(config_text if isinstance(config_text, bytes) else config_text.encode())
        argv += ["--config", str(cfg)]
    assert main(argv) == 2
    assert fragment in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "store").exists()


def test_predict_on_cuda_without_a_gpu_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["predict", "--models", str(tmp_path), "--device", "cuda", str(tmp_path)]) == 2
    assert "--device: cuda was asked for, but this machine has no usable CUDA device" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("bad", ["", ".", "models", "models/a\0.safetensors", 7, "models/", "../x.safetensors"])
def test_a_manifest_whose_model_file_is_not_a_model_path_is_one_line_exit_2(bad, tiny_cfg, tiny_overrides, tmp_path, capsys):
    build_model_set(tiny_cfg)
    dest = tmp_path / "dl"
    assert main(["download", "--to", str(dest), *_flags(tiny_overrides)]) == 0
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["models"][0]["file"] = bad
    (dest / "manifest.json").write_text(json.dumps(seal(manifest, "manifest_sha256")))  # re-sealed: only the path is wrong
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(img)
    capsys.readouterr()
    assert main(["predict", "--models", str(dest), str(img)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"model file {bad!r}" in line


BAD_MODEL_FILES = ["", ".", "models", "models/a\0.safetensors", 7, "../x.safetensors",
                   "models/../../x.safetensors", "/tmp/x.safetensors"]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_MODEL_FILES)
def test_download_refuses_a_stored_manifest_whose_model_file_is_not_a_model_path_before_writing_anything(
    bad, tiny_cfg, tiny_overrides, tmp_path, capsys
):
    exp, _ = build_model_set(tiny_cfg)
    manifest = exp.get_sealed("final", "manifest.json", field="manifest_sha256", what="x")
    manifest["models"][0]["file"] = bad
    exp.put_sealed("final", "manifest.json", obj=manifest, field="manifest_sha256")  # re-sealed: only the path is wrong
    dest = tmp_path / "dl"
    before = sorted(p for p in (tmp_path / "store").rglob("*"))
    assert main(["download", "--to", str(dest), *_flags(tiny_overrides)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{tmp_path / 'store' / 'synthetic' / 'final' / 'manifest.json'}: model file {bad!r}" in line
    assert not dest.exists()  # nothing written: not even the folder
    assert sorted(p for p in (tmp_path / "store").rglob("*")) == before


def test_a_re_signed_best_file_that_is_not_safetensors_is_one_line_at_final(tiny_cfg, tiny_overrides, tmp_path, capsys):
    from aal_k8s.checksums import sha256_hex
    from aal_k8s.store.layout import RECORD_SHA

    exp = _reduced(tiny_cfg)
    run_id = exp.get_sealed("reduce", "summary.json", field="summary_sha256", what="x")["final"]["square"]["run_id"]
    record = exp.read_metrics(run_id)
    meta = record["artifacts"]["best.safetensors"]
    junk = b"\x80\x04not safetensors at all"
    exp.store.put_bytes(exp.key(meta["key"]), junk)
    meta.update(size=len(junk), sha256=sha256_hex(junk))
    exp.store.put_bytes(exp.run_key(run_id, "metrics.json"), json.dumps(seal(record, RECORD_SHA)).encode())
    assert main(["final", *_flags(tiny_overrides)]) == 2
    assert f"run {run_id}: best.safetensors is not a safetensors file" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("run_id", ["../../escape", "..", ".hidden", "a/b", ""])
def test_a_run_id_that_is_not_a_plain_name_is_refused_before_anything_is_written(run_id, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["worker", "--store", str(store), "--experiment", "e", "--run", run_id]) == 2
    assert f"run id {run_id!r} is not a plain name" in _one_line(capsys.readouterr().err)
    assert not store.exists() and sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("experiment", ["..", ".x", "a..b"])
def test_an_experiment_name_that_could_leave_the_store_is_refused(experiment, tmp_path, capsys):
    assert main(["status", "--store", str(tmp_path / "s"), "--experiment", experiment]) == 2
    assert f"experiment: {experiment!r} may only hold" in _one_line(capsys.readouterr().err)
    assert main(["worker", "--store", str(tmp_path / "s"), "--experiment", experiment, "--run", "r1"]) == 2
    assert f"experiment {experiment!r} is not a plain name" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


def test_a_hand_edited_pinned_experiment_record_is_refused(tiny_overrides, tmp_path, capsys):
    assert main(["reduce", *_flags(tiny_overrides)]) == 0
    pinned = tmp_path / "store" / "synthetic" / "experiment.yaml"
    pinned.write_text(pinned.read_text().replace("epochs: 2", "epochs: 3"))
    capsys.readouterr()
    assert main(["reduce", *_flags(tiny_overrides)]) == 2
    assert f"{pinned}: checksum mismatch or no record_sha256 (the pinned record was altered)" in _one_line(
        capsys.readouterr().err
    )


def test_a_worker_started_on_a_run_with_a_truncated_record_moves_it_aside_and_retrains(tiny_overrides, tmp_path):
    """The Kubernetes path: a Job's worker, not submit, is the first to touch the bad record."""
    import io

    assert main(["submit", "--stage", "single", "--attrs", "square", *_flags(tiny_overrides)]) == 0
    [record] = list((tmp_path / "store" / "synthetic" / "runs").glob("*/metrics.json"))
    record.write_bytes(record.read_bytes()[:100])
    log = io.StringIO()
    assert execute(str(tmp_path / "store"), "synthetic", record.parent.name, log=log) == 0
    assert "its commit record failed verification; moved to" in log.getvalue() and "committed by attempt" in log.getvalue()
    exp = ExperimentStore(open_store(str(tmp_path / "store")), "synthetic")
    assert exp.is_committed(record.parent.name) and len(os.listdir(record.parent / "quarantine")) == 1

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
    text = log.getvalue() + (tmp_path / "e/runs/r1/failure.json").read_text()
    assert "sekrit-value-42" not in text and "u:p@" not in text and "***" in text


class _FakeSpec:
    def __init__(self, run_id):
        self.run_id = run_id


def test_scrub_removes_userinfo_env_secrets_and_signatures(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok-abcdef")
    out = scrub("GET https://k:s@h/x?X-Amz-Signature=deadbeef token tok-abcdef")
    assert out == "GET https://***@h/x?X-Amz-Signature=*** token ***"

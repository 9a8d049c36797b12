"""The S3 store against a real S3-protocol server (moto, server mode) on 127.0.0.1, over HTTP with
the real boto3 client: round trip, listing, layout, multipart, faults, checksums, commits."""

from __future__ import annotations

import io
import json
import os
import threading

import pytest
from s3_testing import SECRETS

from aal_k8s.checksums import sha256_hex
from aal_k8s.config import StoreConfig, load_config
from aal_k8s.errors import ConfigError, StoreError, StoreUnavailableError
from aal_k8s.runspec import RunSpec
from aal_k8s.store import (
    ExperimentStore,
    LocalStore,
    open_store,
    store_options_env,
    store_options_from_env,
)
from aal_k8s.store.s3 import S3Store, scrub

MB = 1024 * 1024


def _spec(attr="square", idx=1):
    return RunSpec(experiment="e", stage="single", dataset="synthetic", primary=(attr,), attr_index=(idx,))


def _fast(**kw) -> StoreConfig:
    """Store options for tests: short timeouts, small multipart sizes."""
    base = {
        "max_attempts": 5,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "multipart_threshold_mb": 5,
        "multipart_chunksize_mb": 5,
    }
    return StoreConfig(**{**base, **kw})


def test_bytes_round_trip_through_a_real_s3_server_over_http(s3_uri, raw_s3, bucket):
    s = open_store(s3_uri, _fast())
    assert isinstance(s, S3Store) and s.uri == s3_uri
    s.put_bytes("a/b/c.bin", b"\x00\x01xyz")
    assert s.get_bytes("a/b/c.bin") == b"\x00\x01xyz"
    assert s.exists("a/b/c.bin") and not s.exists("a/b/nope")
    # it really is in the bucket, under the prefix
    assert raw_s3.get_object(Bucket=bucket, Key="aal/a/b/c.bin")["Body"].read() == b"\x00\x01xyz"
    s.delete("a/b/c.bin")
    s.delete("a/b/c.bin")  # deleting twice is fine
    assert not s.exists("a/b/c.bin")
    with pytest.raises(StoreError, match=rf"{s3_uri}/a/b/c.bin: not found"):
        s.get_bytes("a/b/c.bin")


def test_listing_is_recursive_sorted_relative_and_stays_inside_its_prefix(s3_uri, bucket, raw_s3):
    s = open_store(s3_uri, _fast())
    for k in ["runs/x/2.json", "runs/x/1.json", "runs/x/sub/3.bin", "runs/xy/4.json", "other/5"]:
        s.put_bytes(k, k.encode())
    raw_s3.put_object(Bucket=bucket, Key="aal-sibling/runs/x/9.json", Body=b"not ours")
    assert s.list("runs/x") == ["runs/x/1.json", "runs/x/2.json", "runs/x/sub/3.bin"]
    assert s.list("runs/x/") == s.list("runs/x")
    assert s.list("") == sorted(["runs/x/2.json", "runs/x/1.json", "runs/x/sub/3.bin", "runs/xy/4.json", "other/5"])
    assert s.list("missing") == []


def test_listing_pages_through_more_than_a_thousand_keys(s3_uri):
    s = open_store(s3_uri, _fast())
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s.put_bytes(f"many/{i:05d}", b""), range(1005)))
    keys = s.list("many")
    assert len(keys) == 1005 and keys[0] == "many/00000" and keys[-1] == "many/01004"


def test_the_experiment_layout_on_s3_is_the_documented_one(s3_uri):
    exp = ExperimentStore(open_store(s3_uri, _fast()), "exp1", attempt="pod-a")
    spec = _spec()
    exp.write_spec(spec)
    rec = exp.commit_run(spec, {"best.safetensors": b"weights"}, {"val_acc": {"square": 0.5}})
    exp.put_json("reduce", "summary.json", obj={"ok": 1})
    exp.store.put_bytes(exp.key("final", "models", "square.safetensors"), b"m")
    exp.put_json("final", "manifest.json", obj={"models": []})
    exp.put_text("report", "report.md", text="# r")
    rid = spec.run_id
    assert exp.store.list("exp1") == sorted([
        f"exp1/runs/{rid}/spec.json",
        f"exp1/runs/{rid}/attempts/pod-a/best.safetensors",
        f"exp1/runs/{rid}/metrics.json",
        "exp1/reduce/summary.json",
        "exp1/final/models/square.safetensors",
        "exp1/final/manifest.json",
        "exp1/report/report.md",
    ])  # fmt: skip
    assert rec["attempt"] == "pod-a"
    assert rec["artifacts"]["best.safetensors"] == {
        "key": f"runs/{rid}/attempts/pod-a/best.safetensors",
        "size": 7,
        "sha256": sha256_hex(b"weights"),
    }
    assert exp.read_artifact(rid, "best.safetensors") == b"weights"
    assert exp.read_spec(rid) == spec


def test_objects_above_the_multipart_threshold_move_in_parts(s3_uri, bucket, raw_s3, tmp_path):
    s = open_store(s3_uri, _fast())
    big = os.urandom(12 * MB + 123)
    s.put_bytes("big/blob.bin", big)  # 5 MB parts: 3 parts
    etag = raw_s3.head_object(Bucket=bucket, Key="aal/big/blob.bin")["ETag"]
    assert etag.strip('"').endswith("-3"), etag  # the ETag of a multipart upload: md5-of-md5s "-<parts>"
    assert s.get_bytes("big/blob.bin") == big
    src = tmp_path / "src.bin"
    src.write_bytes(big[::-1])
    s.put_file("big/file.bin", src)
    assert raw_s3.head_object(Bucket=bucket, Key="aal/big/file.bin")["ETag"].strip('"').endswith("-3")
    s.get_file("big/file.bin", tmp_path / "out" / "dst.bin")  # managed, ranged download
    assert (tmp_path / "out" / "dst.bin").read_bytes() == big[::-1]
    assert [f for f in os.listdir(tmp_path / "out")] == ["dst.bin"]  # no temp file left
    small = s.get_bytes("big/blob.bin")[:10]
    s.put_bytes("small", small)
    assert "-" not in raw_s3.head_object(Bucket=bucket, Key="aal/small")["ETag"]


def test_transient_5xx_and_connection_resets_are_retried_and_nothing_is_lost(s3_uri, bucket, raw_s3, fault_proxy):
    s = S3Store(s3_uri, _fast(endpoint_url=fault_proxy.url))
    payloads = {f"k/{i:02d}": os.urandom(1000 + i) for i in range(12)}
    # at most max_attempts - 1 faults per request (the proxy hands out faults in order)
    fault_proxy.inject("500", times=2, method="PUT", path="/k/00")
    fault_proxy.inject("reset", times=2, method="PUT", path="/k/03")
    fault_proxy.inject("503", times=1, method="PUT", path="/k/05")
    fault_proxy.inject("500", times=1, method="PUT", path="/k/05")
    fault_proxy.inject("reset_after", times=1, method="PUT", path="/k/07")  # executed, but the answer is lost
    for k, v in payloads.items():
        s.put_bytes(k, v)
    fault_proxy.inject("503", times=1, method="GET", path="/k/01")
    fault_proxy.inject("reset", times=1, method="GET", path="/k/02")
    fault_proxy.inject("truncate", times=2, method="GET", path="/k/04")  # the body breaks off half-way
    fault_proxy.inject("500", times=1, method="HEAD", path="/k/06")
    fault_proxy.inject("reset", times=1, method="GET", path="list-type")
    for k, v in payloads.items():
        assert s.exists(k)
        assert s.get_bytes(k) == v
    assert s.list("k") == sorted(payloads)
    for kind in ("500", "503", "reset", "reset_after", "truncate"):
        assert fault_proxy.outcomes(kind) >= 1, (kind, fault_proxy.log)
    assert fault_proxy.outcomes("500") + fault_proxy.outcomes("503") == 6
    assert fault_proxy.outcomes("truncate") == 2 and fault_proxy.outcomes("reset") == 4
    # nothing lost or damaged, seen directly on the server
    for k, v in payloads.items():
        assert raw_s3.get_object(Bucket=bucket, Key=f"aal/{k}")["Body"].read() == v


def test_faults_during_a_multipart_transfer_are_retried_part_by_part(s3_uri, fault_proxy, tmp_path):
    s = S3Store(s3_uri, _fast(endpoint_url=fault_proxy.url))
    big = os.urandom(11 * MB)
    fault_proxy.inject("500", times=1, method="PUT", path="partNumber=2")
    fault_proxy.inject("reset", times=1, method="PUT", path="partNumber=3")
    fault_proxy.inject("503", times=1, method="POST", path="uploadId")  # CompleteMultipartUpload
    s.put_bytes("big.bin", big)
    fault_proxy.inject("reset", times=1, method="GET")
    fault_proxy.inject("truncate", times=1, method="GET")
    s.get_file("big.bin", tmp_path / "big.bin")
    assert (tmp_path / "big.bin").read_bytes() == big
    assert fault_proxy.outcomes("500") == fault_proxy.outcomes("503") == 1
    assert fault_proxy.outcomes("reset") == 2 and fault_proxy.outcomes("truncate") == 1


def test_a_store_that_keeps_failing_gives_a_retryable_error_naming_the_key(s3_uri, fault_proxy):
    s = S3Store(s3_uri, _fast(endpoint_url=fault_proxy.url, max_attempts=3))
    fault_proxy.inject("503", times=3, method="PUT")
    with pytest.raises(StoreUnavailableError) as e:
        s.put_bytes("runs/r1/metrics.json", b"{}")
    assert f"{s3_uri}/runs/r1/metrics.json" in e.value.message and "3 attempts" in e.value.message
    assert e.value.exit_code == 1  # the worker exits 1: worth a retry, unlike bad input
    fault_proxy.inject("reset", times=3, method="GET")
    with pytest.raises(StoreUnavailableError, match=r"runs/r1/x: download failed after 3 attempts"):
        s.get_bytes("runs/r1/x")


def test_an_unreachable_endpoint_is_one_error_naming_key_and_endpoint_without_credentials(aws_env):
    from s3_testing import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    s = S3Store("s3://nobucket/p", _fast(endpoint_url=endpoint, max_attempts=2, connect_timeout=1.0))
    with pytest.raises(StoreUnavailableError) as e:
        s.get_bytes("k")
    msg = e.value.message
    assert "s3://nobucket/p/k" in msg and endpoint in msg
    assert not any(x in msg for x in SECRETS)


def test_a_missing_bucket_is_named(s3_env):
    s = open_store("s3://no-such-bucket-here/p", _fast())
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist"):
        s.put_bytes("k", b"x")


def test_error_messages_are_scrubbed_of_credentials(aws_env):
    text = (f"key {SECRETS[0]} secret {SECRETS[1]} token {SECRETS[2]} "
            "X-Amz-Credential=AKIAOTHER/20240101/us-east-1/s3/aws4_request&X-Amz-Signature=abc123 "
            "http://user:pw@host:9000/b")  # fmt: skip
    out = scrub(text)
    assert not any(x in out for x in SECRETS)
    assert "AKIAOTHER" not in out and "abc123" not in out and "user:pw" not in out
    assert "X-Amz-Credential=***" in out and "http://***@host:9000/b" in out


def test_a_corrupted_artifact_is_detected_by_its_checksum_and_reported_with_its_key(s3_uri, bucket, raw_s3):
    exp = ExperimentStore(open_store(s3_uri, _fast()), "e", attempt="a1")
    spec = _spec()
    exp.commit_run(spec, {"best.safetensors": b"good weights"}, {})
    key = exp.artifact_key(spec.run_id, "best.safetensors")
    raw_s3.put_object(Bucket=bucket, Key=f"aal/{key}", Body=b"evil weights")  # same size, other bytes
    with pytest.raises(StoreError, match=rf"{s3_uri}/{key}: checksum mismatch \(expected 12 bytes"):
        exp.read_artifact(spec.run_id, "best.safetensors")


def test_a_truncated_artifact_is_detected_by_its_checksum_and_reported_with_its_key(s3_uri, bucket, raw_s3):
    exp = ExperimentStore(open_store(s3_uri, _fast()), "e", attempt="a1")
    spec = _spec()
    exp.commit_run(spec, {"best.safetensors": b"0123456789" * 10}, {})
    key = exp.artifact_key(spec.run_id, "best.safetensors")
    raw_s3.put_object(Bucket=bucket, Key=f"aal/{key}", Body=b"0123456789" * 4)
    with pytest.raises(StoreError, match=rf"{key}: checksum mismatch \(expected 100 bytes .* got 40 bytes"):
        exp.read_artifact(spec.run_id, "best.safetensors")


def test_an_altered_commit_record_fails_its_own_checksum(s3_uri, bucket, raw_s3):
    exp = ExperimentStore(open_store(s3_uri, _fast()), "e", attempt="a1")
    spec = _spec()
    exp.commit_run(spec, {}, {"val_acc": {"square": 0.5}})
    key = f"aal/{exp.run_key(spec.run_id, 'metrics.json')}"
    rec = json.loads(raw_s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    rec["val_acc"]["square"] = 0.99
    raw_s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(rec).encode())
    with pytest.raises(StoreError, match="metrics.json: checksum mismatch"):
        exp.read_metrics(spec.run_id)
    raw_s3.put_object(Bucket=bucket, Key=key, Body=b'{"val_acc": {"squ')
    with pytest.raises(StoreError, match="metrics.json: commit record is not valid JSON"):
        exp.read_metrics(spec.run_id)


def test_a_run_without_its_commit_record_is_invisible_to_reduce(s3_uri, tiny_overrides):
    from aal_k8s.planner import plan_stage
    from aal_k8s.reduce import reduce_experiment

    over = [o for o in tiny_overrides if not o.startswith("store.uri=")] + [f"store.uri={s3_uri}"]
    cfg = load_config(overrides=over, dataset="synthetic")
    exp = ExperimentStore(open_store(s3_uri, cfg.store), cfg.experiment_name, attempt="w")
    specs = plan_stage("single", cfg)
    for spec in specs:
        exp.write_spec(spec)
        a = spec.primary[0]
        exp.commit_run(spec, {"best.safetensors": b"w"}, {"val_acc": {a: 0.6}, "test_acc": {a: 0.5}})
    hidden = specs[2]
    exp.store.delete(exp.run_key(hidden.run_id, "metrics.json"))  # artifacts there, record not
    assert exp.store.list(exp.key("runs", hidden.run_id, "attempts"))
    out = reduce_experiment(exp, cfg)
    assert out.missing["single"] == [hidden.run_id]
    assert hidden.primary[0] not in out.single_val and len(out.single_val) == len(specs) - 1
    assert not exp.is_committed(hidden.run_id)


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_of_concurrent_committers_of_one_run_exactly_one_wins(kind, s3_uri, tmp_path):
    store = open_store(s3_uri, _fast()) if kind == "s3" else LocalStore(str(tmp_path / "st"))
    spec = _spec()
    n = 6
    barrier = threading.Barrier(n)
    results = {}

    def attempt(i):
        exp = ExperimentStore(store, "e", attempt=f"pod-{i}")
        exp.store.put_bytes(exp.checkpoint_key(spec.run_id, 1), b"ckpt")  # some attempt-local file
        barrier.wait()
        rec = exp.commit_run(spec, {"best.safetensors": f"weights of {i}".encode()}, {"who": i})
        results[i] = rec["attempt"]

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = set(results.values())
    assert len(winners) == 1 and len(results) == n  # every attempt agrees on the one winner
    (winner,) = winners
    exp = ExperimentStore(store, "e")
    rec = exp.read_metrics(spec.run_id)
    assert rec["attempt"] == winner and rec["who"] == int(winner.split("-")[1])
    assert exp.read_artifact(spec.run_id, "best.safetensors") == f"weights of {rec['who']}".encode()
    # the losers cleaned up after themselves; the winner's checkpoints went once committed
    left = store.list(f"e/runs/{spec.run_id}")
    assert left == sorted(
        [f"e/runs/{spec.run_id}/metrics.json", f"e/runs/{spec.run_id}/attempts/{winner}/best.safetensors"]
    )


def test_a_lost_answer_to_our_own_commit_still_counts_as_ours(s3_uri, fault_proxy):
    exp = ExperimentStore(S3Store(s3_uri, _fast(endpoint_url=fault_proxy.url)), "e", attempt="solo")
    spec = _spec()
    fault_proxy.inject("reset_after", times=1, method="PUT", path="metrics.json")  # created, answer lost
    rec = exp.commit_run(spec, {"best.safetensors": b"w"}, {})
    assert fault_proxy.outcomes("reset_after") == 1
    assert rec["attempt"] == "solo" and exp.read_artifact(spec.run_id, "best.safetensors") == b"w"


def test_without_conditional_writes_the_commit_falls_back_to_check_then_put(s3_uri, fault_proxy):
    s = S3Store(s3_uri, _fast(endpoint_url=fault_proxy.url))
    fault_proxy.inject("501", times=99, header="If-None-Match")  # an old server
    assert s.put_if_absent("rec", b"1") is True
    assert s.put_if_absent("rec", b"2") is False
    assert s.get_bytes("rec") == b"1" and s._conditional_put is False


def test_checkpoints_keep_the_newest_and_a_half_written_or_damaged_one_is_skipped(s3_uri):
    exp = ExperimentStore(open_store(s3_uri, _fast()), "e", attempt="p1")
    rid = _spec().run_id
    assert exp.latest_checkpoint(rid) is None
    for epoch in range(1, 5):
        exp.write_checkpoint(rid, epoch, f"state {epoch}".encode(), keep=2)
    ck = exp.key("runs", rid, "attempts", "p1", "checkpoints")
    assert exp.store.list(ck) == [f"{ck}/epoch-{e:04d}.{x}" for e in (3, 4) for x in ("json", "pt")]
    epoch, data, url = exp.latest_checkpoint(rid)
    assert (epoch, data) == (4, b"state 4") and url.endswith("p1/checkpoints/epoch-0004.pt")
    # a newer checkpoint of another attempt, killed before its record: skipped
    other = ExperimentStore(exp.store, "e", attempt="p2")
    other.store.put_bytes(other.checkpoint_key(rid, 5), b"half")
    assert exp.latest_checkpoint(rid)[0] == 4
    # a damaged newest one: skipped with its key named, the previous one is used
    exp.store.put_bytes(exp.checkpoint_key(rid, 4), b"state 4 but damaged")
    log = io.StringIO()
    assert exp.latest_checkpoint(rid, log=log)[:2] == (3, b"state 3")
    assert "epoch-0004.json" in log.getvalue() and "checksum mismatch" in log.getvalue()
    # keep=1 never deletes the only one
    solo = ExperimentStore(exp.store, "e", attempt="p3")
    solo.write_checkpoint(rid, 1, b"only", keep=1)
    assert solo.store.exists(solo.checkpoint_key(rid, 1))


def test_store_options_come_from_the_config_or_the_standard_aws_variables(aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    s = S3Store("s3://bkt/p")
    assert s.endpoint_url == "http://127.0.0.1:2" and s.region == "eu-west-3"  # _S3 wins over the generic one
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    s = S3Store("s3://bkt/p")
    assert s.endpoint_url == "http://127.0.0.1:1" and s.region == "ap-south-1"
    s = S3Store("s3://bkt", StoreConfig(endpoint_url="https://minio.local:9000", region="r1",
                                        addressing_style="path", retry_mode="adaptive", max_attempts=7,
                                        connect_timeout=3.0, read_timeout=30.0))  # fmt: skip
    assert s.endpoint_url == "https://minio.local:9000" and s.region == "r1" and s.uri == "s3://bkt"
    c = s.client.meta.config
    assert c.s3["addressing_style"] == "path"
    assert c.retries == {"mode": "adaptive", "total_max_attempts": 7}
    assert (c.connect_timeout, c.read_timeout) == (3.0, 30.0)
    assert c.request_checksum_calculation == "when_required" == c.response_checksum_validation
    assert s.client.meta.endpoint_url == "https://minio.local:9000"


def test_a_worker_gets_the_store_options_through_its_environment(monkeypatch):
    opts = StoreConfig(uri="s3://b/p", endpoint_url="http://h:9000", addressing_style="path", checkpoint_keep=3)
    env = store_options_env(opts)
    assert "uri" not in json.loads(env["AAL_K8S_STORE_OPTIONS"])
    monkeypatch.setenv("AAL_K8S_STORE_OPTIONS", env["AAL_K8S_STORE_OPTIONS"])
    got = store_options_from_env("s3://b/p")
    assert got == opts
    monkeypatch.setenv("AAL_K8S_STORE_OPTIONS", '{"max_attempts": 0, "bogus": 1}')
    with pytest.raises(ConfigError, match="AAL_K8S_STORE_OPTIONS: store.bogus: unknown key"):
        store_options_from_env()
    monkeypatch.setenv("AAL_K8S_STORE_OPTIONS", "{not json")
    with pytest.raises(ConfigError, match="AAL_K8S_STORE_OPTIONS: not valid JSON"):
        store_options_from_env()


def test_impossible_store_settings_are_all_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["store.uri=s3:///x", "store.max_attempts=0", "store.retry_mode=legacy",
                               "store.addressing_style=weird", "store.read_timeout=0", "store.multipart_threshold_mb=1",
                               "store.checkpoint_keep=0", "store.endpoint_url=minio:9000"])  # fmt: skip
    text = str(e.value)
    for key in (
        "store.uri",
        "store.max_attempts",
        "store.retry_mode",
        "store.addressing_style",
        "store.read_timeout",
        "store.multipart_threshold_mb",
        "store.checkpoint_keep",
        "store.endpoint_url",
    ):
        assert key in text, key
    with pytest.raises(ConfigError, match="store.aws_secret_access_key: unknown key"):
        load_config(overrides=["store.aws_secret_access_key=x"])


def test_missing_credentials_are_one_error_saying_where_they_come_from(s3_uri, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    s = open_store(s3_uri, _fast())
    with pytest.raises(StoreError, match=rf"{s3_uri}/k: no S3 credentials found; set AWS_ACCESS_KEY_ID"):
        s.put_bytes("k", b"x")

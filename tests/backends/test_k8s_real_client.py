"""The backend through the real ``kubernetes`` client against a small HTTP server on 127.0.0.1 that
answers like the API server: what the in-memory fake assumes about the client (ApiException's
status/headers/body, models turned into plain dicts, Watch raising 410 from an ERROR event) holds."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from aal_k8s.backends.k8s import Apis, KubernetesBackend
from aal_k8s.backends.k8s_manifests import job_name
from aal_k8s.planner import plan_stage


class FakeApiServer:
    """Jobs in one namespace; POST answers can be scripted (status, headers, store-it-anyway)."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.rv = 10
        self.post_script: list[tuple[int, dict, bool]] = []  # (status, headers, applied)
        self.requests: list[tuple[str, str]] = []
        self.watch_events: list[list[dict]] = []  # per watch request: the lines to stream
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # every response ends with the connection: streams too

            def log_message(self, *a):
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str, headers=None):
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                                  "reason": reason, "code": code}, headers)  # fmt: skip

            def do_POST(self):
                server.requests.append(("POST", self.path))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                name = body["metadata"]["name"]
                status, headers, applied = server.post_script.pop(0) if server.post_script else (201, {}, True)
                if name in server.jobs:
                    return self._status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
                if applied:
                    server.rv += 1
                    body["metadata"]["resourceVersion"] = str(server.rv)
                    body["status"] = {}
                    server.jobs[name] = body
                if status >= 400:
                    return self._status(
                        status, "TooManyRequests" if status == 429 else "InternalError", "scripted", headers
                    )
                self._send(201, body)

            def do_GET(self):
                server.requests.append(("GET", self.path))
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path.endswith("/jobs") and q.get("watch") == "true":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    events = server.watch_events.pop(0) if server.watch_events else []
                    for ev in events:
                        self.wfile.write((json.dumps(ev) + "\n").encode())
                    return
                if url.path.endswith("/jobs"):
                    return self._send(200, {"apiVersion": "batch/v1", "kind": "JobList",
                                            "metadata": {"resourceVersion": str(server.rv)}, "items": list(server.jobs.values())})  # fmt: skip
                if url.path.endswith("/pods") or url.path.endswith("/events"):
                    return self._send(200, {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []})
                self._status(404, "NotFound", "no such path")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeApiServer()
    yield s
    s.close()


@pytest.fixture
def real_apis(server):
    from kubernetes import client, watch

    conf = client.Configuration(host=server.url)
    conf.retries = False  # urllib3's own retries off: the backend's policy is what is tested
    api = client.ApiClient(conf)

    def new_watch():
        w = watch.Watch()
        w._api_client = api
        return w

    return Apis(client.BatchV1Api(api), client.CoreV1Api(api), new_watch, api.sanitize_for_serialization)


def test_retry_after_429_and_409_after_a_5xx_through_the_real_client(server, real_apis, cfg, exp, rec):
    backend = KubernetesBackend(cfg, apis=real_apis, sleep=rec.sleep, clock=rec.clock, log=rec.log)
    [spec] = plan_stage("single", cfg, attributes=["square"])
    server.post_script = [(429, {"Retry-After": "2"}, False), (500, {}, True)]
    report = backend.submit([spec], exp)
    assert report.submitted == [spec.run_id]
    assert rec.sleeps == [2.0, 2.0]  # Retry-After, then the second step of the backoff
    assert [r for r in server.requests if r[0] == "POST"] == [("POST", "/apis/batch/v1/namespaces/aal-k8s/jobs")] * 3
    assert list(server.jobs) == [job_name(spec.experiment, spec.run_id)]


def test_a_410_error_event_makes_the_real_watch_raise_and_the_backend_re_list(server, real_apis, cfg, exp, rec):
    backend = KubernetesBackend(cfg, apis=real_apis, sleep=rec.sleep, clock=rec.clock, log=rec.log)
    [spec] = plan_stage("single", cfg, attributes=["ring"])
    backend.submit([spec], exp)
    name = job_name(spec.experiment, spec.run_id)

    def finish():  # the run completes while the watch is answering 410
        exp.commit_run(spec, {"best.safetensors": b"w"}, {"val_acc": {}, "test_acc": {}, "heads": spec.heads})
        server.jobs[name]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
        server.rv += 1
        return [
            {
                "type": "ERROR",
                "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"},
            }
        ]

    class Lazy(list):
        def pop(self, i=0):
            return finish()

    server.watch_events = Lazy([None])
    before = len(server.requests)
    final = backend.wait([spec], exp)
    assert final[spec.run_id].state == "complete"
    gets = [p for m, p in server.requests[before:] if m == "GET" and "/jobs" in p]
    assert sum("watch=true" in p for p in gets) == 1 and sum("watch=true" not in p for p in gets) == 2  # list, re-list
    assert "410 Gone" in rec.log.getvalue()

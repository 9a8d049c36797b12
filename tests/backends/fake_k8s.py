"""An in-memory Kubernetes API for the backend's tests: the methods of the client's BatchV1Api
and CoreV1Api that the backend calls, a ``kubernetes.watch.Watch`` stand-in, resourceVersions
with a compactable event history (so a watch from an old version gets 410 Gone), and scripted
faults (ApiException 5xx/429/4xx, connection errors) per method.

Objects are plain dicts shaped like the API's JSON, which is what the backend works on.
"""

from __future__ import annotations

import copy
import json
import re
from collections import defaultdict

from kubernetes.client.exceptions import ApiException

from aal_k8s.backends.k8s import Apis

NS = "aal-k8s"


def api_error(status: int, reason: str, message: str = "", headers: dict | None = None) -> ApiException:
    """An ApiException as the client raises it: status, reason, the Status body, headers."""
    e = ApiException(status=status, reason=reason)
    e.body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": status,
        }
    )
    e.headers = dict(headers or {})
    return e


class Fault:
    """A scripted failure of one call. ``applied``: the server did the work, then the reply was lost
    (a create that answers 500 after storing the Job)."""

    def __init__(self, exc: BaseException, applied: bool = False):
        self.exc = exc
        self.applied = applied


def _matches(labels: dict, sel: str | None) -> bool:
    if not sel:
        return True
    for term in re.split(r",(?![^(]*\))", sel):
        term = term.strip()
        m = re.fullmatch(r"(\S+)\s+in\s+\(([^)]*)\)", term)
        if m:
            if labels.get(m.group(1)) not in [v.strip() for v in m.group(2).split(",")]:
                return False
            continue
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeCluster:
    def __init__(self, namespace: str = NS):
        self.ns = namespace
        self.jobs: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.events: list[dict] = []
        self.logs: dict[str, str] = {}
        self.rv = 1000
        self.history: list[tuple[int, str, dict]] = []  # (resourceVersion, type, job) of Job changes
        self.compacted = 0  # a watch from a resourceVersion below this gets 410 Gone
        self.gone_as = "raise"  # or "event" (see FakeWatch)
        self.calls: list[tuple[str, dict]] = []
        self.faults: dict[str, list[Fault]] = defaultdict(list)
        self.on_create = None  # callback(job) before a create is stored (assertions)
        self.on_watch = None  # callback(n) at the start of the n-th watch: mutate, or return a fault
        self.watches = 0
        self.sleeps: list[float] = []  # what a CLI-driven backend slept (see conftest.cli_cluster)
        self.batch = FakeBatchV1Api(self)
        self.core = FakeCoreV1Api(self)

    def apis(self) -> Apis:
        return Apis(self.batch, self.core, lambda: FakeWatch(self))

    # -- bookkeeping ---------------------------------------------------------------------------
    def _call(self, method: str, **kwargs) -> Fault | None:
        self.calls.append((method, kwargs))
        _check_request_timeout(method, kwargs.get("_request_timeout"))
        queue = self.faults.get(method)
        if queue:
            fault = queue.pop(0)
            if fault is not None and not fault.applied:
                raise fault.exc
            return fault
        return None

    def calls_to(self, method: str) -> list[dict]:
        return [kw for m, kw in self.calls if m == method]

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _changed(self, kind: str, job: dict) -> None:
        job["metadata"]["resourceVersion"] = self._bump()
        self.history.append((self.rv, kind, copy.deepcopy(job)))

    def compact(self) -> None:
        """Forget the event history so far (etcd compaction): older watches get 410 Gone."""
        self.compacted = self.rv

    # -- what the cluster's controllers would do -----------------------------------------------
    def job(self, name: str) -> dict:
        return self.jobs[name]

    def set_job_status(self, name: str, status: dict, spec: dict | None = None) -> None:
        job = self.jobs[name]
        job["status"] = status
        if spec:
            job["spec"].update(spec)
        self._changed("MODIFIED", job)

    def complete(self, name: str) -> None:
        self.set_job_status(
            name,
            {"succeeded": 1, "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"},
            ]},
        )  # fmt: skip

    def fail(
        self,
        name: str,
        reason: str = "BackoffLimitExceeded",
        message: str = "Job has reached the specified backoff limit",
    ) -> None:
        self.set_job_status(
            name,
            {"failed": 1, "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
                {"type": "Failed", "status": "True", "reason": reason, "message": message},
            ]},
        )  # fmt: skip

    def add_pod(
        self,
        job_name: str,
        phase: str = "Pending",
        suffix: str = "abcde",
        created: str = "2025-01-01T00:00:00Z",
        **status,
    ) -> dict:
        job = self.jobs[job_name]
        labels = dict(job["spec"]["template"]["metadata"]["labels"])
        labels.update({"batch.kubernetes.io/job-name": job_name, "job-name": job_name})
        name = f"{job_name}-{suffix}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns, "labels": labels, "creationTimestamp": created},
            "spec": copy.deepcopy(job["spec"]["template"]["spec"]),
            "status": {"phase": phase, **status},
        }
        self.pods[name] = pod
        return pod

    def add_event(self, kind: str, name: str, reason: str, message: str, type_: str = "Warning") -> None:
        self.events.append({
            "metadata": {"name": f"{name}.{len(self.events)}", "namespace": self.ns},
            "involvedObject": {"kind": kind, "name": name, "namespace": self.ns},
            "reason": reason, "message": message, "type": type_,
            "lastTimestamp": f"2025-01-01T00:00:{len(self.events):02d}Z",
        })  # fmt: skip


class FakeBatchV1Api:
    def __init__(self, cluster: FakeCluster):
        self.c = cluster

    def create_namespaced_job(self, namespace, body, **kwargs):
        fault = self.c._call("create_namespaced_job", namespace=namespace, body=body, **kwargs)
        body = json.loads(json.dumps(body))  # what the client would send: JSON
        name = body["metadata"]["name"]
        if name in self.c.jobs:
            raise api_error(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
        if self.c.on_create:
            self.c.on_create(body)
        body["metadata"].update(namespace=namespace, uid=f"uid-{name}", creationTimestamp="2025-01-01T00:00:00Z")
        body["status"] = {}
        self.c.jobs[name] = body
        self.c._changed("ADDED", body)
        if fault is not None:
            raise fault.exc
        return copy.deepcopy(body)

    def list_namespaced_job(self, namespace, label_selector=None, watch=False, **kwargs):
        self.c._call("list_namespaced_job", namespace=namespace, label_selector=label_selector, **kwargs)
        items = [
            copy.deepcopy(j) for j in self.c.jobs.values() if _matches(j["metadata"].get("labels", {}), label_selector)
        ]
        return {
            "apiVersion": "batch/v1",
            "kind": "JobList",
            "metadata": {"resourceVersion": str(self.c.rv)},
            "items": items,
        }

    def read_namespaced_job(self, name, namespace, **kwargs):
        self.c._call("read_namespaced_job", name=name, namespace=namespace, **kwargs)
        if name not in self.c.jobs:
            raise api_error(404, "NotFound", f'jobs.batch "{name}" not found')
        return copy.deepcopy(self.c.jobs[name])

    def delete_namespaced_job(self, name, namespace, propagation_policy=None, **kwargs):
        self.c._call(
            "delete_namespaced_job", name=name, namespace=namespace, propagation_policy=propagation_policy, **kwargs
        )
        if name not in self.c.jobs:
            raise api_error(404, "NotFound", f'jobs.batch "{name}" not found')
        job = self.c.jobs.pop(name)
        self.c._changed("DELETED", job)
        if propagation_policy in ("Background", "Foreground"):
            for pod_name in [p for p, pod in self.c.pods.items() if pod["metadata"]["labels"].get("job-name") == name]:
                del self.c.pods[pod_name]
        return {"kind": "Status", "status": "Success"}


class _LogStream:
    def __init__(self, text: str):
        self.text = text
        self.released = False

    def stream(self, amt=None):
        data = self.text.encode()
        for i in range(0, len(data), 7):
            yield data[i : i + 7]

    def release_conn(self):
        self.released = True


class FakeCoreV1Api:
    def __init__(self, cluster: FakeCluster):
        self.c = cluster

    def list_namespaced_pod(self, namespace, label_selector=None, **kwargs):
        self.c._call("list_namespaced_pod", namespace=namespace, label_selector=label_selector, **kwargs)
        items = [copy.deepcopy(p) for p in self.c.pods.values() if _matches(p["metadata"]["labels"], label_selector)]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": str(self.c.rv)}, "items": items}

    def list_namespaced_event(self, namespace, field_selector=None, **kwargs):
        self.c._call("list_namespaced_event", namespace=namespace, field_selector=field_selector, **kwargs)
        want = dict(t.split("=", 1) for t in field_selector.split(",")) if field_selector else {}
        items = [copy.deepcopy(e) for e in self.c.events if all(e.get(k) == v for k, v in want.items())]
        return {
            "apiVersion": "v1",
            "kind": "EventList",
            "metadata": {"resourceVersion": str(self.c.rv)},
            "items": items,
        }

    def read_namespaced_pod_log(self, name, namespace, container=None, follow=False, _preload_content=True, **kwargs):
        self.c._call(
            "read_namespaced_pod_log", name=name, namespace=namespace, container=container, follow=follow, **kwargs
        )
        if name not in self.c.pods:
            raise api_error(404, "NotFound", f'pods "{name}" not found')
        text = self.c.logs.get(name, "")
        return text if _preload_content else _LogStream(text)


def _check_request_timeout(method: str, t) -> None:
    """What the pydantic-validated client (kubernetes 37) accepts: a positive number or a pair
    of them (connect, read); ``(connect, None)`` is a ValidationError before any request."""

    def positive(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0

    if t is None or positive(t) or (isinstance(t, tuple) and len(t) == 2 and all(map(positive, t))):
        return
    raise TypeError(f"{method}: _request_timeout must be a positive number or a pair of them, got {t!r}")


class FakeWatch:
    """``kubernetes.watch.Watch`` over the cluster's Job history. Before the n-th stream starts,
    ``cluster.on_watch(n)`` may change the cluster; it may return an exception to raise at once,
    ``("drop", exc)`` to raise ``exc`` after the events (a connection lost mid-stream), or
    ``("error_event", code)`` to end them with an ERROR event of that status code. A watch
    from before the last compaction gets 410 Gone: raised (``gone_as="raise"``, what the client's
    Watch does) or as an ERROR event (``gone_as="event"``, what the API server sends)."""

    def __init__(self, cluster: FakeCluster):
        self.c = cluster
        self.stopped = False

    def stop(self):
        self.stopped = True

    def stream(self, func, namespace, label_selector=None, resource_version=None, timeout_seconds=None, **kwargs):
        c = self.c
        c.watches += 1
        n = c.watches
        c.calls.append(("watch", dict(namespace=namespace, label_selector=label_selector,
                                      resource_version=resource_version, timeout_seconds=timeout_seconds, **kwargs)))  # fmt: skip
        if n > 50:
            raise RuntimeError("the backend keeps watching: runaway loop in the test")
        assert func == c.batch.list_namespaced_job
        action = c.on_watch(n) if c.on_watch else None
        if isinstance(action, BaseException):
            raise action
        since = int(resource_version or 0)
        if since < c.compacted:
            if c.gone_as == "raise":  # what kubernetes.watch.Watch does with timeout_seconds set
                raise ApiException(status=410, reason="Expired: too old resource version")
            status = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
            yield {"type": "ERROR", "object": status, "raw_object": status}  # the API server's own answer
            return
        for rv, kind, job in list(c.history):
            if rv <= since or not _matches(job["metadata"].get("labels", {}), label_selector):
                continue
            obj = copy.deepcopy(job)
            yield {"type": kind, "object": obj, "raw_object": obj}
            if self.stopped:
                return
        if isinstance(action, tuple) and action[0] == "drop":
            raise action[1]
        if isinstance(action, tuple) and action[0] == "error_event":
            status = {"kind": "Status", "code": action[1], "reason": "InternalError", "message": "etcd leader changed"}
            yield {"type": "ERROR", "object": status, "raw_object": status}

"""Kubernetes backend: one batch/v1 Job per run (or per pack of runs with ``executor.runs_per_job``
> 1: several runs in one pod, named from every member, mapped back to each member run by its
``aal-k8s/runs`` annotation; see docs/kubernetes.md), through the official ``kubernetes`` client.

* ``submit`` writes each run's spec to the store, then creates its Job (``k8s_manifests``). Runs
  committed in the store get no Job. The Job name is a function of (experiment, run id), so a
  second submit creates nothing: an existing Job, or 409 AlreadyExists (also when it answers a
  create retried after a 5xx), counts as submitted. Except a stale one: a Job that succeeded
  while its run is not committed (its commit record failed verification and was moved aside, or
  was lost) is deleted (background propagation) and created anew, so the run is trained again
  now rather than after the Job's TTL.
* Under ``adversarial.lambda_search: halving`` each rung has its own Jobs (a run's or a pack's,
  named with ``-e<epoch>``, labelled ``aal-k8s/rung``), whose workers stop after the rung's epoch:
  submit and wait of a rung see only that rung's Jobs; status and cancel see every Job of a run
  except succeeded rung Jobs (the rung record in the store has what they did).
* ``states`` reads the store first (committed = complete), then Jobs, pods and Warning events:
  running; pending with the scheduler's reason (Unschedulable / FailedScheduling, image pulls,
  Kueue admission); failed with the Job's reason, the container's exit and the worker's message.
* ``wait`` lists the Jobs once, then watches them from that resourceVersion; 410 Gone re-lists
  (nothing finished in between is lost: the list shows it), a dropped connection re-watches.
  Every ``min(30 s, patience / 2)`` it looks at the runs still open: their pending reasons are logged,
  and once none has started or finished for ``k8s.wait_patience_seconds`` while some are pending,
  it gives up with one error naming each such ``namespace/job-name`` and why it waits.
* ``cancel`` deletes Jobs with background propagation; the store is never touched.
* Every API call retries 429, 5xx and connection errors with exponential backoff bounded by
  ``k8s.api_backoff_max_seconds`` (Retry-After wins when the server sends it), at most
  ``k8s.api_max_attempts`` tries; other 4xx fail at once. Errors name ``namespace/job-name``.

The client and its config (kubeconfig, or the in-cluster ServiceAccount) load on first use, so
``submit --dry-run`` needs neither. Tests inject the API objects, ``sleep`` and the clocks.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from aal_k8s.backends import Backend, RunState, SubmitReport
from aal_k8s.backends.k8s_manifests import (
    KUEUE_QUEUE_LABEL,
    PACK_LABEL,
    WORKER_CONTAINER,
    job_name,
    job_rung,
    job_runs,
    pack_job_name,
    pack_manifest,
    rung_job_name,
    selector,
    to_yaml,
)
from aal_k8s.config import PLACEHOLDER_IMAGE
from aal_k8s.errors import AALError
from aal_k8s.runspec import RunSpec
from aal_k8s.store.layout import COMMIT_FILE

#: Reasons a pod/Job waits, as the scheduler and kubelet name them.
UNSCHEDULABLE = "Unschedulable"
FAILED_SCHEDULING = "FailedScheduling"
PROGRESS_EVERY_S = 30.0
SLEEP = time.sleep  # the default of KubernetesBackend(sleep=...); tests replace it


class KubernetesError(AALError):
    """A Kubernetes API call failed; the message names ``namespace/name`` and the API's answer."""

    def __init__(self, message: str, status: int | None = None, gave_up: bool = False):
        super().__init__(message)
        self.status = status
        if gave_up:  # unreachable or overloaded past every retry: worth a retry later (exit 1, not 2)
            self.exit_code = 1


class WaitGaveUp(KubernetesError):
    """``wait`` ran out of ``k8s.wait_patience_seconds``: runs stay pending and nothing moves.
    Exit 1, not 2: the input may be fine (a full cluster, a paused queue) and a later run goes on."""

    exit_code = 1


class _Gone(Exception):
    """The watch's resourceVersion is too old (410 Gone): re-list."""


@dataclass
class Apis:
    """What the backend talks to: the client's BatchV1Api and CoreV1Api (or fakes of them),
    a factory of ``kubernetes.watch.Watch``-like objects, and model -> plain dict."""

    batch: Any
    core: Any
    watch: Callable[[], Any]
    to_dict: Callable[[Any], Any] = lambda obj: obj


def load_apis(k) -> Apis:
    """The in-cluster ServiceAccount config inside a pod, else the kubeconfig (``k8s.context``)."""
    try:
        from kubernetes import client, config, watch
    except ImportError as e:  # pragma: no cover - kubernetes is a dependency
        raise AALError(f"the k8s backend needs the kubernetes package: {e}") from None
    try:
        if k.context:
            config.load_kube_config(context=k.context)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
    except (config.ConfigException, OSError, ValueError, TypeError) as e:
        raise KubernetesError(
            f"no Kubernetes API access ({_one_line(str(e))}): set KUBECONFIG or a kubectl context "
            "(k8s.context), or run inside the cluster with a ServiceAccount"
        ) from None
    api = client.ApiClient()
    return Apis(client.BatchV1Api(api), client.CoreV1Api(api), watch.Watch, api.sanitize_for_serialization)


# -- errors and retries ------------------------------------------------------------------------
def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def api_status(e: BaseException) -> int | None:
    """The HTTP status of a client ``ApiException`` (duck-typed: importing the client is slow)."""
    status = getattr(e, "status", None)
    if isinstance(status, int) and not isinstance(status, bool) and hasattr(e, "reason") and status > 0:
        return status
    return None


def _connection_errors() -> tuple[type[BaseException], ...]:
    import urllib3

    return (urllib3.exceptions.HTTPError, OSError)


def describe(e: BaseException) -> str:
    """One line: ``403 Forbidden: jobs.batch is forbidden: ...`` or the connection error."""
    status = api_status(e)
    if status is None:
        inner = getattr(e, "reason", None)  # urllib3's MaxRetryError wraps the real cause
        if isinstance(inner, BaseException):
            e = inner
        return _one_line(f"{type(e).__name__}: {e}")
    msg = ""
    body = getattr(e, "body", None)
    if body:
        try:
            msg = json.loads(body).get("message", "")
        except (ValueError, AttributeError, TypeError):
            msg = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    head = f"{status} {getattr(e, 'reason', '') or ''}".strip()
    return _one_line(f"{head}: {msg}" if msg else head)


def retry_after(e: BaseException, now: float) -> float | None:
    """Seconds from the Retry-After header (delta-seconds or an HTTP date), if any."""
    headers = getattr(e, "headers", None) or {}
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
    except AttributeError:
        return None
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _retryable(status: int | None) -> bool:
    return status is None or status == 429 or status >= 500


# -- reading Job / pod status (plain dicts, as the API sends them) ----------------------------
def _meta(obj: dict) -> dict:
    return obj.get("metadata") or {}


def _true_conditions(obj: dict) -> dict[str, dict]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if str(c.get("status")) == "True"}


def job_outcome(job: dict) -> str | None:
    """ "complete" / "failed" once the Job controller says so, else None."""
    conds = _true_conditions(job)
    if "Complete" in conds:
        return "complete"
    if "Failed" in conds:
        return "failed"
    return None


def _created(obj: dict) -> str:
    return str(_meta(obj).get("creationTimestamp") or "")


def _terminated(pod: dict) -> dict | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == WORKER_CONTAINER:
            return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
    return None


def _termination_text(pod: dict) -> str:
    t = _terminated(pod)
    if not t:
        return ""
    text = f"exit {t.get('exitCode')}"
    if t.get("reason"):
        text += f" ({t['reason']})"
    # terminationMessagePolicy FallbackToLogsOnError: the log's tail; its last line names the error
    last = next((ln.strip() for ln in reversed(str(t.get("message") or "").splitlines()) if ln.strip()), "")
    return text + (f": {_one_line(last, 200)}" if last else "")


def _waiting(pod: dict) -> dict | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return waiting
    return None


def _pod_job(pod: dict) -> str | None:
    """The Job a pod belongs to, from the label its Job controller sets (``job-name`` before 1.27)."""
    labels = _meta(pod).get("labels") or {}
    return labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")


def _with_message(reason: str, message: str | None) -> str:
    return _one_line(f"{reason}: {message}" if message else reason)


_NOT_APPLY = (
    "To inspect only: do not kubectl apply these. Each Job's worker reads its run's spec from the\n"
    "store, which only `aal-k8s submit` writes; create them with aal-k8s submit (namespace {ns})."
)


class KubernetesBackend(Backend):
    name = "k8s"

    def __init__(
        self,
        cfg,
        apis: Apis | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] | None = None,
        log=None,
    ):
        self.cfg = cfg
        self.k = cfg.k8s
        self.ns = cfg.k8s.namespace
        self._apis = apis
        self.sleep = sleep or SLEEP
        self.clock = clock or time.monotonic
        self.wall = wall or time.time
        self._log = log
        # the halving rung being submitted or waited for (0: the runs' Jobs to the end); None
        # outside submit/wait (status, cancel, logs): a run's Jobs of any rung count
        self._until: int | None = None

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def apis(self) -> Apis:
        if self._apis is None:
            self._apis = load_apis(self.k)
        return self._apis

    def log(self, message: str) -> None:
        print(f"k8s: {message}", file=self._log or sys.stderr, flush=True)

    def _backoff(self, attempt: int) -> float:
        return min(self.k.api_backoff_seconds * 2 ** (attempt - 1), self.k.api_backoff_max_seconds)

    def _retry_delay(self, what: str, e: Exception, attempt: int) -> float | None:
        """The retry policy for failed try number ``attempt`` of an API call or watch: the seconds
        to wait (Retry-After wins, capped), ``KubernetesError`` when ``e`` is not worth another
        try or that was the last, None when ``e`` is no API or connection error (re-raise it)."""
        status = api_status(e)
        if status is None and not isinstance(e, _connection_errors()):
            return None
        if not _retryable(status):
            raise KubernetesError(f"{what}: {describe(e)}", status) from None
        if attempt >= self.k.api_max_attempts:
            raise KubernetesError(f"{what}: {describe(e)} (gave up after {attempt} attempts)", status, gave_up=True) from None
        hinted = retry_after(e, self.wall())
        return min(hinted, self.k.api_backoff_max_seconds) if hinted is not None else self._backoff(attempt)

    def call(self, what: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` with the retry policy; ``what`` ("ns/name: verb") names errors."""
        kwargs.setdefault("_request_timeout", self.k.api_timeout_seconds)
        attempt = 1
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                delay = self._retry_delay(what, e, attempt)
                if delay is None:
                    raise
                self.log(f"{what}: {describe(e)}; retry {attempt}/{self.k.api_max_attempts - 1} in {delay:g}s")
                self.sleep(delay)
                attempt += 1

    def _plain(self, obj):
        return obj if isinstance(obj, (dict, list)) or obj is None else self.apis.to_dict(obj)

    def _pack_bytes(self, exp) -> int:
        """One download of the dataset pack (the store's manifest, else an estimate); once per backend."""
        if not hasattr(self, "_pack_size"):
            from aal_k8s.cost import pack_bytes

            self._pack_size = pack_bytes(self.cfg, exp.store)
        return self._pack_size

    def preflight(self) -> None:
        self._check_store()

    def _check_store(self, creating: bool = True) -> None:
        """Refuse to create Jobs that cannot work: credentials in the URI, the placeholder image
        (every pod would sit in ImagePullBackOff), a folder store no pod can see (every run would
        write nowhere). A dry run (``creating=False``) only warns about the last two."""
        uri = self.cfg.store.uri
        parts = urlsplit(uri)
        if parts.username or parts.password or "@" in parts.netloc:
            raise AALError(
                "store.uri must not carry credentials (they would land in every Job manifest): "
                f"put them in the Secret {self.k.store_secret or '(k8s.store_secret)'} instead"
            )
        problems = []
        if self.k.image == PLACEHOLDER_IMAGE or "your-org" in self.k.image:
            problems.append(
                f"k8s.image is still the placeholder {self.k.image!r}: push the image built from Dockerfile and set k8s.image"
            )
        if not uri.startswith("s3://") and not self.k.store_volume_claim:
            problems.append(
                f"store.uri {uri!r} is not an s3:// store and no pod can see that folder: use an s3:// store, "
                "or set k8s.store_volume_claim to a ReadWriteMany PVC holding it (see docs/kubernetes.md)"
            )
        if problems and creating:
            raise AALError("; ".join(problems))
        for p in problems:
            self.log(f"warning: {p}")

    def _stages(self, specs: list[RunSpec]) -> list[str]:
        return sorted({s.stage for s in specs})

    def _what(self, kind: str, experiment: str, stages=None, run_id: str | None = None) -> str:
        """``aal-k8s/jobs of experiment celeba, stage pairwise`` (for messages)."""
        text = f"{self.ns}/{kind} of experiment {experiment}"
        if stages:
            text += f", stage {'/'.join(sorted(set(stages)))}"
        return text + (f", run {run_id}" if run_id else "")

    def _list_jobs(self, experiment: str, stages) -> tuple[dict[str, dict], str | None]:
        sel = selector(experiment, stages)
        what = f"{self._what('jobs', experiment, stages)}: list"
        got = self._plain(self.call(what, self.apis.batch.list_namespaced_job, self.ns, label_selector=sel))
        jobs = {_meta(j).get("name"): j for j in got.get("items") or []}
        return jobs, _meta(got).get("resourceVersion")

    def _list_pods(self, experiment: str, stages, run_id: str | None = None, pack: str | None = None) -> list[dict]:
        sel = selector(experiment, stages, run_id, pack)
        what = f"{self._what('pods', experiment, stages, run_id)}: list"
        got = self._plain(self.call(what, self.apis.core.list_namespaced_pod, self.ns, label_selector=sel))
        return list(got.get("items") or [])

    def _warning_events(self) -> dict[tuple[str, str], dict]:
        """The latest Warning event per (kind, name) in the namespace."""
        got = self._plain(
            self.call(
                f"{self.ns}/events: list",
                self.apis.core.list_namespaced_event,
                self.ns,
                field_selector="type=Warning",
            )
        )
        latest: dict[tuple[str, str], dict] = {}
        for ev in got.get("items") or []:
            obj = ev.get("involvedObject") or {}
            key = (obj.get("kind"), obj.get("name"))
            when = str(ev.get("lastTimestamp") or ev.get("eventTime") or _created(ev))
            if key not in latest or when >= latest[key][0]:
                latest[key] = (when, ev)
        return {k: v for k, (_, v) in latest.items()}

    def _committed(self, exp, specs: list[RunSpec]) -> set[str]:
        """Run ids committed in the store: one listing, not one request per run. During a halving
        rung (``_until``), also the runs that reached it: they are done with that rung's Job."""
        wanted = {s.run_id for s in specs}
        try:
            done = wanted & exp.committed_ids()
        except Exception:  # a store without listing: ask run by run
            done = {r for r in wanted if exp.is_committed(r)}
        if self._until:
            from aal_k8s.halving import reached

            done |= {r for r in wanted - done if reached(exp, r, self._until)}
        return done

    def _is_done(self, exp, run_id: str) -> bool:
        if self._until:
            from aal_k8s.halving import reached

            return reached(exp, run_id, self._until)
        return exp.is_committed(run_id)

    def _job_name(self, experiment: str, run_id: str) -> str:
        return rung_job_name(experiment, run_id, self._until or 0)

    # -- packs: several runs in one Job (executor.runs_per_job) -------------------------------------
    def _packs(self, specs: list[RunSpec]) -> list[list[RunSpec]]:
        from aal_k8s.planner import job_packs

        return job_packs(specs, self.cfg.executor.runs_per_job)

    def _owner(self, jobs: dict[str, dict], packed: dict[str, list[str]], experiment: str, run_id: str) -> str | None:
        """The name of the Job that trains ``run_id``: its own Job, or a pack Job listing it
        (``packed``: run id -> pack Jobs, from ``_packed``). A Job still running wins over a
        finished one, so a run packed after its own Job failed (or the reverse) maps to the live one."""
        names = [n for n in (*packed.get(run_id, ()), self._job_name(experiment, run_id)) if n in jobs]
        if not names:
            return None
        return next((n for n in names if job_outcome(jobs[n]) is None), names[0])

    def _packed(self, jobs: dict[str, dict]) -> dict[str, list[str]]:
        """Run id -> the Jobs (names) whose ``aal-k8s/runs`` annotation lists it: pack Jobs, and a
        run's own Jobs of halving rungs (``job_runs``). In submit/wait only the Jobs of the rung at
        hand (``_until``; 0: to the end): a member's finished Job of an earlier rung must not stand
        in for the next one's. Elsewhere (status, cancel) every Job except the rung Jobs that
        succeeded: their work is in the store (the rung record), and their runs wait for a decision
        or their next Job, not for them."""
        out: dict[str, list[str]] = {}
        for name in sorted(jobs):
            rung = job_rung(jobs[name])
            if self._until is not None:
                if rung != self._until:
                    continue
            elif rung and job_outcome(jobs[name]) == "complete":
                continue
            for run_id in job_runs(jobs[name]):
                out.setdefault(run_id, []).append(name)
        return out

    @contextlib.contextmanager
    def _rung(self, until_epoch: int):
        """Submit/wait the Jobs of one halving rung (0: the runs' own Jobs)."""
        before, self._until = self._until, until_epoch
        try:
            yield
        finally:
            self._until = before

    # -- render / submit ---------------------------------------------------------------------
    def render(self, specs: list[RunSpec], exp) -> str:
        self._check_store(creating=False)
        try:
            committed = self._committed(exp, specs)
        except Exception as e:  # a dry run must work without store credentials too
            self.log(f"warning: cannot read the store ({_one_line(str(e), 200)}): rendering every run")
            committed = None
        readable, committed = committed is not None, committed or set()
        stages = ", ".join(self._stages(specs)) or "-"
        halving = readable and self.cfg.adversarial.lambda_search == "halving" and "adversarial" in self._stages(specs)
        plain = [s for s in specs if not (halving and s.stage == "adversarial")]
        # (pack, its members to train, until_epoch): one Job each
        jobs = [(p, m, 0) for p in self._packs(plain) if (m := [s for s in p if s.run_id not in committed])]
        whole = None
        if halving:
            from aal_k8s.halving import job_plan

            plan = job_plan(exp, self.cfg, specs)  # one Job per run (or pack) and rung: the next rung's are shown
            whole = plan.total + len(jobs)  # the other stages' Jobs, and every rung's
            jobs += plan.next
        n = self.cfg.executor.runs_per_job
        runs = f" for {sum(len(m) for _, m, _ in jobs)} runs (packs of up to {n} runs per Job)" if n > 1 else ""
        count = f"{len(jobs)} Jobs{runs}" if whole is None else (
            f"{len(jobs)} Jobs now{runs}, {whole} over the whole halving search,")  # fmt: skip
        header = (
            f"aal-k8s: {count} for stage {stages} of experiment {exp.experiment} "
            f"({len(committed)} runs already complete in {self.cfg.store.uri} are left out).\n"
            + _NOT_APPLY.format(ns=self.ns)
        )
        pack = self._pack_bytes(exp)
        return to_yaml([pack_manifest(p, m, self.cfg, pack, until) for p, m, until in jobs], header)

    def submit(self, specs: list[RunSpec], exp, until_epoch: int = 0) -> SubmitReport:
        with self._rung(until_epoch):
            return self._submit(specs, exp)

    def _submit(self, specs: list[RunSpec], exp) -> SubmitReport:
        self._check_store()
        report = SubmitReport()
        committed = self._committed(exp, specs)
        report.skipped = [s.run_id for s in specs if s.run_id in committed]
        todo = [s for s in specs if s.run_id not in committed]
        if not todo:
            return report
        existing, _ = self._list_jobs(exp.experiment, self._stages(todo))
        packed = self._packed(existing)
        # packs over every given run, committed ones too: a pack keeps its name (and finds its Job)
        packs = [(p, m) for p in self._packs(specs) if (m := [s for s in p if s.run_id not in committed])]
        created, already, replaced = 0, 0, 0
        for pack, members in packs:
            name = pack_job_name(exp.experiment, pack, self._until)
            # a run another Job trains (a pack made before --attrs or runs_per_job changed, or its
            # own Job from runs_per_job=1) stays with that Job: never two pods writing one run
            elsewhere = {s.run_id: o for s in members if (o := self._owner(existing, packed, exp.experiment, s.run_id))
                         not in (None, name)}  # fmt: skip
            for s in members:
                if s.run_id in elsewhere:
                    self._already(report, existing[elsewhere[s.run_id]], exp, s)
            already += len(set(elsewhere.values()))
            members = [s for s in members if s.run_id not in elsewhere]
            if not members:
                continue
            job = existing.get(name)
            stale = job is not None and job_outcome(job) == "complete"
            if stale:
                done = [s for s in members if self._is_done(exp, s.run_id)]  # committed since the store was read
                report.skipped += [s.run_id for s in done]
                members = [s for s in members if s not in done]
                if not members:
                    continue
                self._delete_stale(name, [s.run_id for s in members])
                replaced += 1
                job = None
            if job is None:
                for s in members:
                    exp.write_spec(s)  # the worker reads it: always before the Job exists
                manifest = pack_manifest(pack, members, self.cfg, self._pack_bytes(exp), self._until)
                try:
                    self.call(f"{self.ns}/{name}: create Job", self.apis.batch.create_namespaced_job, self.ns, manifest)
                    created += 1
                    if created % 100 == 0:
                        self.log(f"{created}/{len(packs)} Jobs created")
                except KubernetesError as e:
                    if e.status != 409:
                        if created:
                            e.message += f" ({created} Jobs were created before this error; submit again to go on)"
                        raise
                    already += 1  # AlreadyExists: another submit (or our retried create) got there first
                    if stale and self._still_stale(name):
                        for s in members:
                            report.failed[s.run_id] = (
                                f"its stale Job {self.ns}/{name} (succeeded, run not committed) is still being "
                                "deleted; submit again in a moment to train the run again"
                            )
                report.submitted += [s.run_id for s in members]
            else:
                already += 1
                for s in members:
                    self._already(report, job, exp, s)
        stale_note = f" ({replaced} of them replacing a stale Job)" if replaced else ""
        runs = f" for {len(report.submitted)} runs" if self.cfg.executor.runs_per_job > 1 else ""
        self.log(f"{created} Jobs created in namespace {self.ns}{runs}{stale_note}, {already} already there")
        return report

    def _already(self, report: SubmitReport, job: dict, exp, spec: RunSpec) -> None:
        """``spec`` is submitted: ``job`` (which exists) trains it; a failed one is reported with the way out."""
        report.submitted.append(spec.run_id)
        if job_outcome(job) == "failed":
            report.failed[spec.run_id] = (
                f"its Job {self.ns}/{_meta(job).get('name')} has failed "
                f"({self._failed_reason(job, [], exp, spec.run_id)}); "
                f"`aal-k8s cancel --stage {spec.stage}` deletes it so that a new submit retries the run"
            )

    def _delete_stale(self, name: str, run_ids: list[str]) -> None:
        """Delete a Job that succeeded although its run (a member of its pack) is not committed.
        Background propagation: the Job object goes at once (its pods after), so the new Job can
        take its name now."""
        self.log(f"{self.ns}/{name}: succeeded but run {', '.join(run_ids)} is not committed (its commit record "
                 "was moved aside or lost): deleting the Job to create it anew")  # fmt: skip
        self._delete_job(name, "delete stale Job")  # already gone (its TTL, another submit): create it all the same

    def _delete_job(self, name: str, what: str) -> None:
        """Delete Job ``name`` with background propagation (the Job object goes at once, its pods
        after); a Job already gone is not an error."""
        try:
            self.call(f"{self.ns}/{name}: {what}", self.apis.batch.delete_namespaced_job, name, self.ns,
                      propagation_policy="Background")  # fmt: skip
        except KubernetesError as e:
            if e.status != 404:
                raise

    def _still_stale(self, name: str) -> bool:
        """After a delete, is the Job that answered 409 the old one (still terminating, e.g. held
        by a finalizer) rather than one another submit just created?"""
        try:
            job = self.call(f"{self.ns}/{name}: read Job", self.apis.batch.read_namespaced_job, name, self.ns)
        except KubernetesError as e:
            if e.status == 404:
                return False
            raise
        job = self._plain(job)
        return bool(_meta(job).get("deletionTimestamp")) or job_outcome(job) == "complete"

    # -- states ------------------------------------------------------------------------------
    def _failed_reason(self, job: dict, pods: list[dict], exp, run_id: str) -> str:
        cond = _true_conditions(job).get("Failed") or {}
        parts = [_with_message(cond.get("reason") or "Failed", cond.get("message"))]
        finished = [p for p in pods if _terminated(p)]
        if finished:
            last = max(finished, key=_created)
            parts.append(f"last pod {_termination_text(last)}")
        try:
            failure = exp.read_failure(run_id)
        except Exception:
            failure = None
        if failure and failure.get("message"):
            parts.append(f"worker: {failure['message']}")
        return _one_line("; ".join(parts))

    def _pod_wait_reason(self, pod: dict, events) -> str:
        conds = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
        sched = conds.get("PodScheduled")
        if sched and str(sched.get("status")) == "False":
            return _with_message(sched.get("reason") or UNSCHEDULABLE, sched.get("message"))
        waiting = _waiting(pod)
        if waiting and waiting["reason"] not in ("ContainerCreating", "PodInitializing"):
            return _with_message(waiting["reason"], waiting.get("message"))
        ev = events().get(("Pod", _meta(pod).get("name")))
        if not sched:
            if ev and ev.get("reason") == FAILED_SCHEDULING:
                return _with_message(FAILED_SCHEDULING, ev.get("message"))
            return "Pending: not scheduled yet"
        if ev and ev.get("reason") != FAILED_SCHEDULING:  # scheduled; e.g. FailedMount of a volume
            return _with_message(ev.get("reason") or "Warning", ev.get("message"))
        return _with_message(waiting["reason"], waiting.get("message")) if waiting else "Pending: scheduled, starting"

    def _job_state(self, run_id: str, job: dict, pods: list[dict], events, exp) -> RunState:
        name = _meta(job).get("name")
        outcome = job_outcome(job)
        if outcome == "failed":
            return RunState(run_id, "failed", self._failed_reason(job, pods, exp, run_id))
        if outcome == "complete":
            url = exp.store.url(exp.run_key(run_id, f"rungs/epoch-{self._until:04d}.json" if self._until else COMMIT_FILE))
            return RunState(run_id, "failed", f"Job {self.ns}/{name} succeeded but {url} does not exist "
                                              "(a new submit replaces the Job and trains the run again)")  # fmt: skip
        if (job.get("spec") or {}).get("suspend"):
            queue = (_meta(job).get("labels") or {}).get(KUEUE_QUEUE_LABEL)
            why = f"waiting for Kueue admission in queue {queue}" if queue else "the Job is suspended"
            return RunState(run_id, "pending", f"Suspended: {why}")
        live = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        live = [p for p in live if not _meta(p).get("deletionTimestamp")] or live
        if live:
            pod = max(live, key=_created)
            if (pod.get("status") or {}).get("phase") == "Running":
                return RunState(run_id, "running")
            return RunState(run_id, "pending", self._pod_wait_reason(pod, events))
        ev = events().get(("Job", name))
        if ev and ev.get("reason") == "FailedCreate":
            return RunState(run_id, "pending", _with_message("FailedCreate", ev.get("message")))
        if pods:
            last = max(pods, key=_created)
            return RunState(run_id, "pending", f"Retrying: previous pod {_termination_text(last) or 'ended'}")
        return RunState(run_id, "pending", "Created: waiting for the Job controller to start a pod")

    def states(self, specs: list[RunSpec], exp) -> dict[str, RunState]:
        committed = self._committed(exp, specs)
        out = {s.run_id: RunState(s.run_id, "complete") for s in specs if s.run_id in committed}
        rest = [s for s in specs if s.run_id not in committed]
        if not rest:
            return out
        stages = self._stages(rest)
        jobs, _ = self._list_jobs(exp.experiment, stages)
        packed = self._packed(jobs)
        owner = {s.run_id: self._owner(jobs, packed, exp.experiment, s.run_id) for s in rest}
        pods_by_job: dict[str, list[dict]] = {}
        if any(owner.values()):
            for pod in self._list_pods(exp.experiment, stages):
                pods_by_job.setdefault(_pod_job(pod), []).append(pod)
        cache: dict = {}

        def events():
            if "events" not in cache:
                cache["events"] = self._warning_events()
            return cache["events"]

        for spec in rest:
            name = owner[spec.run_id]
            if name is not None:  # a pack's members share its Job and pods; each keeps its own failure record
                out[spec.run_id] = self._job_state(spec.run_id, jobs[name], pods_by_job.get(name, []), events, exp)
                continue
            failure = exp.read_failure(spec.run_id)
            if failure:
                out[spec.run_id] = RunState(spec.run_id, "failed", _one_line(f"no Job; worker: {failure['message']}"))
            else:
                out[spec.run_id] = RunState(spec.run_id, "not_submitted")
        return out

    # -- wait --------------------------------------------------------------------------------
    def wait(self, specs: list[RunSpec], exp, until_epoch: int = 0) -> dict[str, RunState]:
        with self._rung(until_epoch):
            return self._wait(specs, exp)

    def _wait(self, specs: list[RunSpec], exp) -> dict[str, RunState]:
        if not specs:
            return {}
        # Job name -> the runs it trains (a pack: several); filled from each listing of the Jobs
        by_name: dict[str, list[str]] = {}
        job_of: dict[str, str] = {}
        total = len(specs)
        stages = self._stages(specs)
        done: dict[str, RunState] = {r: RunState(r, "complete") for r in self._committed(exp, specs)}
        progress = {"shown": None, "at": None}

        def settle(run_id: str, job: dict | None) -> None:
            if run_id in done:
                return
            if job is None:  # deleted (cancelled, or TTL-collected while we were away)
                if self._is_done(exp, run_id):
                    done[run_id] = RunState(run_id, "complete")
                else:
                    done[run_id] = RunState(run_id, "failed", "its Job was deleted before the run committed")
                return
            outcome = job_outcome(job)
            if outcome == "complete" and self._is_done(exp, run_id):
                done[run_id] = RunState(run_id, "complete")
            elif outcome is not None:
                done[run_id] = RunState(run_id, "failed", "")

        def report(force: bool = False) -> None:
            counts = (
                sum(s.state == "complete" for s in done.values()),
                sum(s.state == "failed" for s in done.values()),
            )
            now = self.clock()
            due = progress["at"] is None or now - progress["at"] >= PROGRESS_EVERY_S
            if counts != progress["shown"] and (due or force):
                self.log(f"{'/'.join(stages)}: {counts[0]}/{total} complete, {counts[1]} failed")
                progress.update(shown=counts, at=now)

        patience = self.k.wait_patience_seconds
        # the watch returns this often (server-side timeout) so that waiting runs are looked at
        every = min(float(self.k.watch_timeout_seconds), PROGRESS_EVERY_S, max(1.0, patience / 2 if patience else 1e9))
        watch = {"seen": None, "changed": self.clock(), "checked": self.clock(), "told": None}

        def look() -> None:
            """The open runs' states: log why they wait; give up after ``patience`` without change."""
            now = self.clock()
            if now - watch["checked"] < every:
                return
            watch["checked"] = now
            rest = [s for s in specs if s.run_id not in done]
            if not rest:
                return
            states = self.states(rest, exp)
            seen = {r: (st.state, st.reason) for r, st in states.items()}
            if seen != watch["seen"] or any(st.state == "running" for st in states.values()):
                watch.update(seen=seen, changed=now)
            pending = {r: st for r, st in states.items() if st.state == "pending"}
            if not pending:
                return
            names = {r: f"{self.ns}/{job_of.get(r) or self._job_name(exp.experiment, r)}" for r in pending}
            if watch["told"] is None or now - watch["told"] >= PROGRESS_EVERY_S:
                first = sorted(pending)[0]
                self.log(f"{'/'.join(stages)}: {len(pending)} pending, e.g. {names[first]}: {pending[first].reason}")
                watch["told"] = now
            idle = now - watch["changed"]
            if patience and idle >= patience:
                why = "; ".join(f"{names[r]}: {pending[r].reason or 'pending'}" for r in sorted(pending)[:3])
                more = f" (+{len(pending) - 3} more)" if len(pending) > 3 else ""
                raise WaitGaveUp(
                    f"gave up waiting: {len(pending)} runs of stage {'/'.join(stages)} still pending after "
                    f"{idle:.0f}s in which no run started or finished (k8s.wait_patience_seconds={patience}): "
                    f"{why}{more}; their Jobs are left in place: fix the cause and run again, or "
                    f"`aal-k8s cancel --stage {stages[0]}`"
                )

        while len(done) < total:
            jobs, rv = self._list_jobs(exp.experiment, stages)
            packed = self._packed(jobs)
            job_of.clear()
            for s in specs:  # a run without a Job: its own name, which settles it as deleted
                job_of[s.run_id] = self._owner(jobs, packed, exp.experiment, s.run_id) or self._job_name(exp.experiment, s.run_id)
            by_name.clear()
            for run_id, name in job_of.items():
                by_name.setdefault(name, []).append(run_id)
                settle(run_id, jobs.get(name))
            report()
            if len(done) == total:
                break
            try:
                self._watch(exp.experiment, stages, rv, by_name, settle, report, lambda: len(done) == total,
                            look, int(every))  # fmt: skip
            except _Gone:
                self.log("watch expired (410 Gone): listing the Jobs again")
        report(force=True)
        final = self.states(specs, exp)
        for run_id, st in done.items():  # the watch saw it end; states() may no longer see the Job
            if st.state == "failed" and final.get(run_id, st).state != "failed":
                final[run_id] = RunState(run_id, "failed", st.reason or final[run_id].reason or "its Job failed")
        return final

    def _watch(self, experiment: str, stages, rv, by_name, settle, report, finished, idle=None, timeout=None) -> None:
        """Follow Job events from ``rv`` until every run has settled; raises _Gone on 410. Each watch
        request ends after ``timeout`` seconds (server side); ``idle()`` then runs before the next."""
        sel = selector(experiment, stages)
        what = f"{self._what('jobs', experiment, stages)}: watch"
        failures = 0
        while not finished():
            w = self.apis.watch()
            try:
                for event in w.stream(
                    self.apis.batch.list_namespaced_job,
                    self.ns,
                    label_selector=sel,
                    resource_version=rv,
                    timeout_seconds=timeout or self.k.watch_timeout_seconds,
                    allow_watch_bookmarks=True,
                    _request_timeout=(self.k.api_timeout_seconds, self.k.watch_timeout_seconds + 30),
                ):
                    kind = event.get("type")
                    obj = event.get("raw_object")
                    obj = self._plain(event.get("object")) if obj is None else obj
                    if kind == "ERROR":
                        code = (obj or {}).get("code")
                        message = _one_line(f"{code} {(obj or {}).get('message', '')}")
                        if code == 410:
                            raise _Gone()
                        if isinstance(code, int) and _retryable(code):  # the server ended the watch: reconnect
                            import urllib3

                            raise urllib3.exceptions.ProtocolError(f"watch ERROR event {message}")
                        raise KubernetesError(f"{what}: {message}", code)
                    failures = 0
                    rv = _meta(obj).get("resourceVersion") or rv
                    if kind == "BOOKMARK":
                        continue
                    runs = by_name.get(_meta(obj).get("name")) or []
                    for run_id in runs:  # every member of a pack Job
                        settle(run_id, None if kind == "DELETED" else obj)
                    if runs:
                        report()
                    if finished():
                        w.stop()
                        return
            except (_Gone, KubernetesError):
                raise
            except Exception as e:
                if api_status(e) == 410:
                    raise _Gone() from None
                failures += 1
                delay = self._retry_delay(what, e, failures)
                if delay is None:
                    raise
                self.log(f"watch dropped ({describe(e)}); reconnecting in {delay:g}s from resourceVersion {rv}")
                self.sleep(delay)
            # a watch that ended normally (server timeout) resumes from the last resourceVersion
            if idle is not None and not finished():
                idle()

    # -- cancel / logs -----------------------------------------------------------------------
    def cancel(self, specs: list[RunSpec], exp) -> list[str]:
        """Delete the Jobs of runs not committed yet (background propagation removes their pods).
        Committed runs, their Jobs and everything in the store stay as they are."""
        if not specs:
            return []
        jobs, _ = self._list_jobs(exp.experiment, self._stages(specs))
        packed = self._packed(jobs)
        committed = self._committed(exp, specs)
        cancelled, deleted = [], set()
        for spec in specs:
            if spec.run_id in committed:
                continue
            for name in {*packed.get(spec.run_id, ()), job_name(spec.experiment, spec.run_id)} & set(jobs):
                if name not in deleted:  # a pack Job goes once, with every member not committed yet
                    self._delete_job(name, "delete Job")
                    deleted.add(name)
            if spec.run_id in packed or job_name(spec.experiment, spec.run_id) in jobs:
                cancelled.append(spec.run_id)
        return cancelled

    def logs(self, run_id: str, exp, follow: bool = False, out=None) -> None:
        out = out or sys.stdout
        name, pack = job_name(exp.experiment, run_id), None
        if self.cfg.executor.runs_per_job > 1:  # the run may train in a pack Job: find it by its annotation
            jobs, _ = self._list_jobs(exp.experiment, None)
            name = self._owner(jobs, self._packed(jobs), exp.experiment, run_id) or name
            pack = (_meta(jobs[name]).get("labels") or {}).get(PACK_LABEL) if name in jobs else None
        pods = self._list_pods(exp.experiment, None, None if pack else run_id, pack)
        if not pods and self.stored_logs(run_id, exp, out):  # the Job is gone: the attempts' copies
            return
        if not pods:
            try:
                job = self._plain(
                    self.call(f"{self.ns}/{name}: read Job", self.apis.batch.read_namespaced_job, name, self.ns)
                )
            except KubernetesError as e:
                if e.status != 404:
                    raise
                done = (
                    " (the run is committed: its Job was deleted after it finished)" if exp.is_committed(run_id) else ""
                )
                raise KubernetesError(f"{self.ns}/{name}: no such Job{done}", 404) from None
            st = self._job_state(run_id, job, [], lambda: {}, exp)
            raise KubernetesError(f"{self.ns}/{name}: no pod yet ({st.state}: {st.reason})")
        pods.sort(key=_created)
        pod = pods[-1]
        pod_name = _meta(pod).get("name")
        phase = (pod.get("status") or {}).get("phase", "?")
        shared = f"; pack {pack}: the log holds every member's lines" if pack else ""
        self.log(f"{self.ns}/{pod_name} ({phase}; attempt {len(pods)} of Job {name}{shared})")
        what = f"{self.ns}/{pod_name}: read log"
        try:
            self._pod_log(what, pod_name, follow, out)
        except KubernetesError as e:
            # the kubelet cannot serve it (its node is gone, unreachable, or has no log server):
            # the attempts' own copies in the store, when there are some, rather than nothing
            if not self.stored_logs(run_id, exp, out):
                raise
            self.log(f"{e}: printed the attempts' copies from the store instead")

    def _pod_log(self, what: str, pod_name: str, follow: bool, out) -> None:
        if follow:
            resp = self.call(
                what,
                self.apis.core.read_namespaced_pod_log,
                pod_name,
                self.ns,
                container=WORKER_CONTAINER,
                follow=True,
                _preload_content=False,
                # (connect, None) for "no read timeout" is refused by the pydantic-validated client
                # (kubernetes 37): a quiet worker is silent at most its Job's deadline (else a week)
                _request_timeout=(self.k.api_timeout_seconds, float(self.k.active_deadline_seconds or 7 * 86400)),
            )
            try:
                for chunk in resp.stream(4096):
                    out.write(chunk.decode(errors="replace") if isinstance(chunk, bytes) else chunk)
                    out.flush()
            finally:
                resp.release_conn()
        else:
            text = self.call(
                what, self.apis.core.read_namespaced_pod_log, pod_name, self.ns, container=WORKER_CONTAINER
            )
            out.write(text if isinstance(text, str) else text.decode(errors="replace"))

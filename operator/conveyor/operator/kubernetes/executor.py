"""The Kubernetes executor: the engine's actions applied to the cluster, and what the cluster shows
turned back into observations. Thin I/O only; every object comes from `builders`.

`KubernetesExecutor` holds what is operator-wide (the API, settings, the progress store);
`for_pipeline(owner, body)` binds it to one pipeline as a `PipelineExecutor`, which implements
`conveyor.operator.executors.protocol.Executor` for that reconcile step.

- Apply: server-side apply under the single field manager `conveyor-operator` (force), so a repeated
  StartWorkload for the same (name, attempt) is a no-op on the server and a restarted operator never
  creates a second Job for one attempt: the name is the key (`builders.job_name(pipeline, name, attempt)`).
- Observe: one list of Jobs and one list of Pods per pipeline (by the `conveyor.dev/pipeline` label),
  reported as facts only (`conveyor.operator.engine.observations`): the Job's state (Complete is
  succeeded, Failed is failed, no Job is lost), the trainer's result whenever a pod has one (also
  while other pods still run), and failure reasons from the Job's Failed condition and the pods
  (exit code 2 or PodFailurePolicy: InvalidInput; OOMKilled, ImagePullBackOff, other exit codes).
  What a Complete Job without a result means is the engine's decision (NoResult), as locally.
  The result is the JSON the trainer wrote to its termination message (File policy, no log
  fallback), preferring completion index 0; it survives an operator that was down when the pod
  finished, because Jobs carry no TTL and stay until the pipeline goes. Live per-epoch progress
  comes from the progress endpoint (`statusserver.ProgressStore`), never from logs.
- Serving: the Deployment's readiness; no Deployment means nothing is served.
- Stop: delete the Job (propagationPolicy Background) and its headless Service. Ask to stop (a
  pruned user loop, `request_stop`): tell the progress endpoint (`statusserver.ProgressStore.ask_stop`),
  which answers that attempt's POSTs with `{"stop": true}` from then on; nothing is written to the
  cluster, and the engine repeats the ask on every reconcile, so a new leader learns it on its first.
- Progress and stops are keyed by the pipeline's label value (`builders.label_value`), as the
  endpoint knows a pod's pipeline from its labels alone.
- Storage: a pipeline without `storage.uri` gets the claim `builders.artifacts_claim` before its first
  pod (checked once per pipeline per operator process), with a `StorageProvisioned` Event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from conveyor.operator.api import GROUP, PLURAL, VERSION
from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import parse_time
from conveyor.operator.engine.observations import (
    INVALID_INPUT,
    EpochReport,
    Observations,
    ObservedState,
    ServingObservation,
    WorkloadObservation,
)
from conveyor.operator.kubernetes import builders
from conveyor.operator.workloads import EXIT_INVALID_INPUT, Workload
from conveyor.trainer.config import ServingSpec

log = logging.getLogger("conveyor.operator.kubernetes")

EVENT_MESSAGE_LIMIT = 1024  # events.k8s.io/v1 `note` limit; core/v1 messages are trimmed alike
WAITING_PROBLEMS = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
)

PATHS = {
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "Event": "/api/v1/namespaces/{ns}/events",
    "TrainingPipeline": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
}


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        try:
            self.reason = json.loads(body).get("message", body)
        except ValueError:
            self.reason = body
        super().__init__(f"{status}: {self.reason}")


@dataclass
class Api:
    """JSON over the kubernetes client's HTTP plumbing: any path, any patch type, dicts in and out."""

    client: Any  # kubernetes.client.ApiClient
    on_error: Callable[[str], None] | None = None
    timeout: float = 30.0  # seconds per request

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        serialized = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*serialized, _request_timeout=self.timeout)
        data = response.read()
        text = data.decode() if isinstance(data, bytes) else str(data or "")
        if response.status >= 400:
            if self.on_error is not None and response.status != 404:
                self.on_error(method)
            raise ApiError(response.status, text)
        return json.loads(text) if text else None

    def get(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        return self.request("GET", path, query=query)

    def apply(self, obj: Mapping[str, Any]) -> Any:
        meta = obj["metadata"]
        path = PATHS[obj["kind"]].format(ns=meta["namespace"]) + f"/{meta['name']}"
        query = {"fieldManager": builders.FIELD_MANAGER, "force": "true"}
        return self.request("PATCH", path, dict(obj), query, "application/apply-patch+yaml")

    def delete(self, kind: str, namespace: str, name: str) -> None:
        path = PATHS[kind].format(ns=namespace) + f"/{name}"
        try:
            self.request("DELETE", path, {"propagationPolicy": "Background"})
        except ApiError as error:
            if error.status != 404:
                raise

    def list(self, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        reply = self.get(PATHS[kind].format(ns=namespace), {"labelSelector": label_selector})
        items: list[dict[str, Any]] = reply.get("items", [])
        return items


def termination_result(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The trainer's result from the pod's termination message, if it wrote one."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != builders.CONTAINER:
            continue
        terminated = (status.get("state") or {}).get("terminated") or {}
        message = terminated.get("message")
        if not message:
            continue
        try:
            result = json.loads(message)
        except ValueError:
            continue
        if isinstance(result, dict) and result.get("event", "result") == "result":
            return result
    return None


def pod_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of what is wrong with a pod: a waiting problem or a failed container."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in WAITING_PROBLEMS:
            return waiting["reason"], waiting.get("message") or waiting["reason"]
        terminated = state.get("terminated") or {}
        code = terminated.get("exitCode")
        if code not in (None, 0):
            reason = terminated.get("reason") or "Error"
            if reason == "Error":
                reason = INVALID_INPUT if code == EXIT_INVALID_INPUT else "ExitCode"
            message = terminated.get("message") or ""
            if message.startswith("{"):
                message = ""
            detail = f"container {status.get('name')} exited with code {code}"
            return reason, f"{detail}: {message}" if message else detail
    if (pod.get("status") or {}).get("reason") in ("Evicted", "Preempting", "NodeLost"):
        return pod["status"]["reason"], pod["status"].get("message") or ""
    return None


def completion_index(pod: Mapping[str, Any]) -> int:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get("batch.kubernetes.io/job-completion-index", "0"))
    except ValueError:
        return 0


def job_condition(job: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def observe_job(
    job: Mapping[str, Any] | None,
    pods: list[dict[str, Any]],
    attempt: int,
    epochs: tuple[EpochReport, ...] = (),
) -> WorkloadObservation:
    """One workload attempt's observation from its Job and pods, facts only (pure: tested without a
    cluster)."""
    if job is None:
        return WorkloadObservation(state="lost", attempt=attempt, epochs=epochs)
    status = job.get("status") or {}
    started = parse_time(status.get("startTime"))
    result = None
    for pod in sorted(pods, key=completion_index):
        result = termination_result(pod)
        if result is not None:
            break
    problems = [p for p in (pod_problem(pod) for pod in pods) if p is not None]
    failed = job_condition(job, "Failed") or job_condition(job, "FailureTarget")
    complete = job_condition(job, "Complete") or job_condition(job, "SuccessCriteriaMet")
    common: dict[str, Any] = {"attempt": attempt, "epochs": epochs, "started_at": started}
    if failed is not None:
        reason, message = problems[0] if problems else (failed.get("reason"), failed.get("message"))
        if failed.get("reason") == "PodFailurePolicy":  # its one FailJob rule: exit code 2
            reason = INVALID_INPUT
        finished = parse_time(failed.get("lastTransitionTime"))
        return WorkloadObservation(
            state="failed",
            result=result,
            reason=reason or "JobFailed",
            message=message or failed.get("message") or "",
            finished_at=finished,
            **common,
        )
    if complete is not None:
        finished = parse_time(status.get("completionTime") or complete.get("lastTransitionTime"))
        if result is None and not any(completion_index(p) == 0 for p in pods):
            # Rank 0's pod went (evicted as it finished, its node deleted) before its result was read:
            # the result is lost, not unwritten, so the attempt is lost and runs again.
            return WorkloadObservation(state="lost", attempt=attempt, epochs=epochs, started_at=started)
        return WorkloadObservation(state="succeeded", result=result, finished_at=finished, **common)
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    if problems and not running and result is None:
        reason, message = problems[0]
        return WorkloadObservation(state="pending", reason=reason, message=message, **common)
    # A result while pods still run: rank 0 finished and the others are exiting.
    state: ObservedState = "running" if running or result is not None else "pending"
    return WorkloadObservation(state=state, result=result, **common)


def observe_jobs(
    pipeline: str,
    workloads: Iterable[tuple[str, int]],
    jobs: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    epochs: Callable[[str, int], tuple[EpochReport, ...]] = lambda name, attempt: (),
) -> dict[str, WorkloadObservation]:
    """Each workload (name, attempt) observed from a pipeline's Jobs and Pods as the API lists them
    (pure); `epochs` gives the progress reported for one attempt."""
    by_name = {job["metadata"]["name"]: job for job in jobs}
    pods_of: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        owner = ((pod.get("metadata") or {}).get("labels") or {}).get("job-name")
        if owner:
            pods_of.setdefault(owner, []).append(dict(pod))
    seen = {}
    for name, attempt in workloads:
        job = builders.job_name(pipeline, name, attempt)
        seen[name] = observe_job(by_name.get(job), pods_of.get(job, []), attempt, epochs(name, attempt))
    return seen


def observe_deployment(deployment: Mapping[str, Any] | None, url: str) -> ServingObservation:
    if deployment is None:
        return ServingObservation(ready=False)  # nothing served
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    annotations = (((spec.get("template") or {}).get("metadata") or {}).get("annotations")) or {}
    ready_replicas = int(status.get("readyReplicas") or 0)
    available = any(
        c.get("type") == "Available" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return ServingObservation(
        ready=available and ready_replicas > 0,
        model=annotations.get("conveyor.dev/model"),
        url=url,
        replicas=spec.get("replicas"),
        ready_replicas=ready_replicas,
        reason=None if ready_replicas else "NoReadyReplicas",
    )


ProgressLookup = Callable[[str, str, str, int], tuple[EpochReport, ...]]
StopRequest = Callable[[str, str, str, int], None]  # (namespace, pipeline label, workload, attempt)


def _no_progress(namespace: str, pipeline: str, workload: str, attempt: int) -> tuple[EpochReport, ...]:
    return ()


def _no_endpoint(namespace: str, pipeline: str, workload: str, attempt: int) -> None:
    """Without a progress endpoint nothing can be asked: the grace period ends in a stop."""


@dataclass
class KubernetesExecutor:
    """What every pipeline's executor shares: the API, the operator's settings, the progress store
    (`progress` reads it, `ask_stop` tells it which attempts to answer with a stop)."""

    api: Api
    settings: builders.Settings = field(default_factory=builders.Settings)
    progress: ProgressLookup = _no_progress
    claims: set[tuple[str, str]] = field(default_factory=set)  # (namespace, uid): claim known to exist
    ask_stop: StopRequest = _no_endpoint

    def for_pipeline(self, owner: builders.Owner, body: Mapping[str, Any]) -> PipelineExecutor:
        """The executor of one pipeline (`body` as last read: Events refer to it)."""
        return PipelineExecutor(self, owner, body)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        path = PATHS["TrainingPipeline"].format(ns=namespace) + f"/{name}/status"
        patch = [{"op": "add", "path": "/status", "value": dict(status)}]
        self.api.request("PATCH", path, patch, content_type="application/json-patch+json")


@dataclass
class PipelineExecutor:
    """One pipeline's children: implements `protocol.Executor` for one reconcile step."""

    shared: KubernetesExecutor
    owner: builders.Owner
    body: Mapping[str, Any]

    @property
    def api(self) -> Api:
        return self.shared.api

    def observe(self, workloads: Iterable[tuple[str, int]], serving: bool) -> Observations:
        owner, keys = self.owner, list(workloads)
        jobs: list[dict[str, Any]] = []
        pods: list[dict[str, Any]] = []
        if keys:
            selector = f"{builders.LABEL_PIPELINE}={builders.label_value(owner.name)}"
            jobs = self.api.list("Job", owner.namespace, selector)
            pods = self.api.list("Pod", owner.namespace, selector)

        def epochs(name: str, attempt: int) -> tuple[EpochReport, ...]:
            return self.shared.progress(owner.namespace, builders.label_value(owner.name), name, attempt)

        seen = observe_jobs(owner.name, keys, jobs, pods, epochs)
        return Observations(workloads=seen, serving=self.observe_serving() if serving else None)

    def observe_serving(self) -> ServingObservation | None:
        spec = self.owner.spec.serving
        if spec is None:
            return None
        name = builders.serving_name(self.owner.name)
        path = PATHS["Deployment"].format(ns=self.owner.namespace) + f"/{name}"
        try:
            deployment = self.api.get(path)
        except ApiError as error:
            if error.status != 404:
                raise
            deployment = None
        return observe_deployment(deployment, builders.serving_url(self.owner, spec))

    def ensure_storage(self) -> None:
        """Provision the artifacts claim of a pipeline without `storage.uri` (once), and say so."""
        claim = builders.artifacts_claim(self.owner)
        key = (self.owner.namespace, self.owner.uid)
        if claim is None or key in self.shared.claims:
            return
        name = claim["metadata"]["name"]
        try:
            self.api.get(PATHS["PersistentVolumeClaim"].format(ns=self.owner.namespace) + f"/{name}")
        except ApiError as error:
            if error.status != 404:
                raise
            self.api.apply(claim)
            (mode,) = claim["spec"]["accessModes"]
            self.emit(
                "Normal",
                "StorageProvisioned",
                f"spec.storage.uri is not set: provisioned PersistentVolumeClaim {name} ({mode}, "
                f"{builders.PROVISIONED_SIZE}, default StorageClass) for the artifacts of every stage; "
                "it is deleted with the pipeline. Set spec.storage.uri: pvc://CLAIM[/PATH] to use "
                "a claim of your own.",
            )
        self.shared.claims.add(key)

    def start(self, workload: Workload) -> None:
        self.ensure_storage()
        for obj in builders.workload_objects(self.owner, self.shared.settings, workload):
            try:
                self.api.apply(obj)
            except ApiError as error:
                # The Job of this attempt exists, made by another replica or version whose pod template
                # differs (a Job's template is immutable): it is this attempt's Job, so keep it.
                if not (error.status == 422 and obj["kind"] == "Job" and "field is immutable" in error.body):
                    raise

    def stop(self, name: str, attempt: int) -> None:
        job = builders.job_name(self.owner.name, name, attempt)
        self.api.delete("Job", self.owner.namespace, job)
        self.api.delete("Service", self.owner.namespace, job)

    def request_stop(self, name: str, attempt: int) -> None:
        self.shared.ask_stop(self.owner.namespace, builders.label_value(self.owner.name), name, attempt)

    def start_serving(self, model: str, serving: ServingSpec) -> None:
        self.ensure_storage()
        for obj in builders.serving_objects(self.owner, self.shared.settings, model, serving):
            self.api.apply(obj)

    def stop_serving(self) -> None:
        name = builders.serving_name(self.owner.name)
        for kind in ("HorizontalPodAutoscaler", "Service", "Deployment"):
            self.api.delete(kind, self.owner.namespace, name)

    def delete_pipeline(self) -> None:
        self.api.delete("TrainingPipeline", self.owner.namespace, self.owner.name)

    def emit(self, type: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        meta = self.body["metadata"]
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        if len(message) > EVENT_MESSAGE_LIMIT:
            message = message[: EVENT_MESSAGE_LIMIT - 3] + "..."
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": self.body.get("apiVersion"),
                "kind": self.body.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type,
            "reason": reason[:128],
            "message": message,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": builders.FIELD_MANAGER},
            "reportingComponent": builders.FIELD_MANAGER,
            "reportingInstance": builders.FIELD_MANAGER,
        }
        try:
            self.api.request("POST", PATHS["Event"].format(ns=meta["namespace"]), event)
        except ApiError as error:  # an Event is best effort; status carries the same facts
            log.warning("event %s/%s not posted: %s", meta["name"], reason, error)


def owner_of(body: Mapping[str, Any], spec: TrainingPipelineSpec) -> builders.Owner:
    meta = body["metadata"]
    return builders.Owner(meta["name"], meta["namespace"], meta["uid"], spec)

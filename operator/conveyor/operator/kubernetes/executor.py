"""The Kubernetes executor: the engine's actions applied to the cluster, and what the cluster shows
turned back into observations. Thin I/O only; every object comes from `builders`.

- Apply: server-side apply under the single field manager `conveyor-operator` (force), so a repeated
  StartWorkload for the same (name, attempt) is a no-op on the server and a restarted operator never
  creates a second Job for one attempt: the name is the key.
- Observe: one list of Jobs and one list of Pods per pipeline (by the `conveyor.dev/pipeline` label).
  A workload's final result is the JSON the trainer wrote to its termination message (File policy, no
  log fallback), preferring completion index 0; it survives an operator that was down when the pod
  finished, because Jobs carry no TTL and stay until the pipeline goes. Failure reasons come from the
  Job's Failed condition and the pods (OOMKilled, ImagePullBackOff, exit codes). Live per-epoch
  progress comes from the progress endpoint (`statusserver.ProgressStore`), never from logs.
- A workload status lists as active but whose Job is gone is `lost`: the engine starts its next attempt.
- Stop: delete the Job (propagationPolicy Background) and its headless Service.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conveyor.operator.api import GROUP, PLURAL, VERSION
from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.engine import active_workloads, workload_for
from conveyor.operator.engine.actions import (
    Action,
    DeletePipeline,
    Emit,
    StartServing,
    StartWorkload,
    StopServing,
    StopWorkload,
)
from conveyor.operator.engine.observations import (
    EpochReport,
    Observations,
    ServingObservation,
    WorkloadObservation,
)
from conveyor.operator.kubernetes import builders
from conveyor.operator.workloads import Workload

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
        response = self.client.call_api(*serialized, _request_timeout=30)
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


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


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
                reason = "ExitCode"
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
    """One workload attempt's observation from its Job and pods (pure: tested without a cluster)."""
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
        if failed.get("reason") == "PodFailurePolicy":
            reason = reason or "InvalidInput"
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
        if result is None:
            return WorkloadObservation(
                state="failed",
                reason="NoResult",
                message="the Job completed but no pod left a result in its termination message",
                finished_at=finished,
                **common,
            )
        return WorkloadObservation(state="succeeded", result=result, finished_at=finished, **common)
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    if result is not None:  # rank 0 finished; the others are still exiting
        return WorkloadObservation(state="running", result=result, **common)
    if problems and not running:
        reason, message = problems[0]
        return WorkloadObservation(state="pending", reason=reason, message=message, **common)
    return WorkloadObservation(state="running" if running else "pending", **common)


def observe_deployment(deployment: Mapping[str, Any] | None, url: str) -> ServingObservation | None:
    if deployment is None:
        return None
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


def _no_progress(namespace: str, pipeline: str, workload: str, attempt: int) -> tuple[EpochReport, ...]:
    return ()


@dataclass
class KubernetesExecutor:
    """Applies one pipeline's actions and observes its children."""

    api: Api
    settings: builders.Settings = field(default_factory=builders.Settings)
    progress: ProgressLookup = _no_progress

    def observe(
        self, owner: builders.Owner, status: PipelineStatus | None
    ) -> tuple[Observations, list[Workload]]:
        active = active_workloads(status)
        selector = f"{builders.LABEL_PIPELINE}={builders.label_value(owner.name)}"
        jobs: dict[str, dict[str, Any]] = {}
        pods: dict[str, list[dict[str, Any]]] = {}
        if active:
            for job in self.api.list("Job", owner.namespace, selector):
                jobs[job["metadata"]["name"]] = job
            for pod in self.api.list("Pod", owner.namespace, selector):
                name = ((pod.get("metadata") or {}).get("labels") or {}).get("job-name")
                if name:
                    pods.setdefault(name, []).append(pod)
        seen: dict[str, WorkloadObservation] = {}
        workloads = []
        assert status is not None or not active
        for name, attempt in active:
            workload = workload_for(owner.spec, status, name, attempt)  # type: ignore[arg-type]
            workloads.append(workload)
            job_name = builders.job_name(owner.name, workload)
            epochs = self.progress(owner.namespace, owner.name, name, attempt)
            seen[name] = observe_job(jobs.get(job_name), pods.get(job_name, []), attempt, epochs)
        serving = None
        if status is not None and status.serving is not None and owner.spec.serving is not None:
            name = builders.serving_name(owner.name)
            path = PATHS["Deployment"].format(ns=owner.namespace) + f"/{name}"
            try:
                deployment = self.api.get(path)
            except ApiError as error:
                if error.status != 404:
                    raise
                deployment = None
            serving = observe_deployment(deployment, builders.serving_url(owner, owner.spec.serving))
        return Observations(workloads=seen, serving=serving), workloads

    def apply(self, owner: builders.Owner, body: Mapping[str, Any], actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, StartWorkload):
                for obj in builders.workload_objects(owner, self.settings, action.workload):
                    self.api.apply(obj)
            elif isinstance(action, StopWorkload):
                self.stop(owner, action.name, action.attempt)
            elif isinstance(action, StartServing):
                for obj in builders.serving_objects(owner, self.settings, action.model, action.serving):
                    self.api.apply(obj)
            elif isinstance(action, StopServing):
                name = builders.serving_name(owner.name)
                for kind in ("HorizontalPodAutoscaler", "Service", "Deployment"):
                    self.api.delete(kind, owner.namespace, name)
            elif isinstance(action, Emit):
                self.event(body, action.type, action.reason, action.message)
            elif isinstance(action, DeletePipeline):
                self.api.delete("TrainingPipeline", owner.namespace, owner.name)

    def stop(self, owner: builders.Owner, name: str, attempt: int) -> None:
        job = builders.dns_name(owner.name, f"{name}-{attempt}", limit=52)
        self.api.delete("Job", owner.namespace, job)
        self.api.delete("Service", owner.namespace, job)

    def event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        if len(message) > EVENT_MESSAGE_LIMIT:
            message = message[: EVENT_MESSAGE_LIMIT - 3] + "..."
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
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

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        path = PATHS["TrainingPipeline"].format(ns=namespace) + f"/{name}/status"
        patch = [{"op": "add", "path": "/status", "value": dict(status)}]
        self.api.request("PATCH", path, patch, content_type="application/json-patch+json")


def owner_of(body: Mapping[str, Any], spec: TrainingPipelineSpec) -> builders.Owner:
    meta = body["metadata"]
    return builders.Owner(meta["name"], meta["namespace"], meta["uid"], spec)

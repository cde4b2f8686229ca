"""Pure manifest builders: the engine's workloads rendered into Kubernetes objects (plain dicts).

No I/O and no client objects, so every decision here is table-tested (tests/unit/test_kubernetes_
builders.py) and the executor stays a thin apply/observe layer, as in Kubeflow Trainer's plugins.

What a pipeline's children look like, and why:

- A distributed workload (a trial, the final training) is an Indexed `batch/v1` Job with
  completions = parallelism = workers plus a headless Service with `publishNotReadyAddresses`, so
  rank 0 has the stable name `<job>-0.<service>` before any pod is Ready (rendezvous races, anchors
  §6 #2). The node rank is the completion index, read through the downward API into `PET_NODE_RANK`;
  everything else comes from `conveyor.operator.workloads`, the same contract the local executor uses.
  A worker of one process (CPU, or one GPU per pod) runs the trainer as the pod's own process, with
  `RANK` = the completion index, instead of under a torchrun agent: the agent's interpreter and torch
  import came first and its exit barrier after, 4-6 s of a trial's start and 2 s of its end on the
  test bed (benchmarks/RESULTS.md, `pod_startup.py`). The `PET_*` environment stays for images that
  start torchrun themselves (`training.command`, several processes per worker).
- Single-process stages (prepare, evaluate, ensemble) are plain Jobs; serving is a Deployment and a
  Service (+ an HPA when `serving.autoscaling` is set) with a readiness probe on the Open Inference
  Protocol's `/v2/health/ready`.
- Retries belong to the engine, not the Job: `backoffLimit: 0`, so any counted failure ends the Job and
  the engine restarts the whole gang as its next attempt from the checkpoint (one torchrun node
  restarted alone hangs the others). The pod failure policy separates what is not the workload's
  fault (a `DisruptionTarget` condition: preemption, eviction, node drain -> Ignore, the pod is simply
  recreated) from what retrying cannot fix (`EXIT_INVALID_INPUT`, the trainer's "invalid config or
  data" -> FailJob at once, reason PodFailurePolicy). Exit 137/143 without a disruption counts as a
  failure.
- Jobs get no TTL: their pods carry the durable result (the termination message, policy File, no log
  fallback) until the operator has read it, even if it was down when they finished. They go with the
  pipeline through owner references.
- Pods pass the PodSecurity `restricted` profile, mount no service-account token (workloads get no
  Kubernetes API access) and, when the operator runs a progress endpoint, get a projected token for the
  audience `conveyor.dev` only, which the API server itself does not accept, and with TLS the endpoint's
  CA certificate as a file beside it (from the pod template's annotation; statusserver says why).
- Artifacts: `storage.uri` `pvc://CLAIM[/PATH]` is mounted at /artifacts (subPath PATH) in every stage
  pod. No URI: the operator provisions the claim `<pipeline>-artifacts` (`artifacts_claim`, owned by the
  pipeline, so it goes with it; ReadWriteMany when pods of the pipeline run at once, i.e. workers > 1,
  tuning.parallelism > 1 or serving replicas > 1, else ReadWriteOnce) from the default StorageClass;
  never a per-pod emptyDir, which would split the stages' artifacts apart. Each pipeline's run root
  is `/artifacts/<pipeline name>`, so pipelines may share one claim.
- Data: the prepare pod is the one pod that reads `data.source` (every later stage reads the prepared
  split from the run root). A `pvc://CLAIM/PATH` source is mounted there read-only at
  `$CONVEYOR_PVC_ROOT/CLAIM`, and `data.credentialsSecret` becomes its environment (`envFrom`; the
  explicit environment wins over the Secret's keys). A missing Secret keeps the pod from starting
  (CreateContainerConfigError), which the executor reports.
- User code: `code.image` is the image of every pod of the pipeline. `code.configMap` (a packed code
  directory, made by `conveyor apply`) is mounted read-only in every pod, workloads and serving alike,
  and named by `CONVEYOR_CODE_ARCHIVE`; the trainer unpacks it into the pod's /tmp emptyDir (the root
  filesystem is read-only) and puts it on the path (`conveyor.trainer.usercode.activate_code`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from conveyor.operator.api import API_VERSION, KIND
from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.workloads import (
    DEFAULT_MASTER_PORT,
    EXIT_INVALID_INPUT,
    TRAINER_MODULE,
    Workload,
    command_argv,
    python_argv,
    serve_argv,
)
from conveyor.sdk import env as sdk_env
from conveyor.trainer.config import DEFAULT_PVC_ROOT, PVC_ROOT_ENV, PVC_SCHEME, ServingSpec, split_pvc
from conveyor.trainer.progress import PROGRESS_CA_FILE_ENV, PROGRESS_TOKEN_FILE_ENV, PROGRESS_URL_ENV

FIELD_MANAGER = "conveyor-operator"
CONTAINER = "trainer"
SERVER_CONTAINER = "server"
ARTIFACTS_MOUNT = "/artifacts"
TOKEN_DIR = "/var/run/secrets/conveyor.dev"
TOKEN_AUDIENCE = "conveyor.dev"
TOKEN_SECONDS = 3600
DEFAULT_IMAGE = "ghcr.io/conveyor-dev/conveyor-trainer:latest"
RUN_AS = 10001
CODE_MOUNT = "/var/run/conveyor/code"  # where code.configMap is mounted (read-only)
CODE_ARCHIVE_KEY = "code.tar.gz"  # the ConfigMap's binaryData key holding the packed directory
PROVISIONED_SIZE = "5Gi"  # the claim provisioned for a pipeline without storage.uri
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
# The progress endpoint's CA certificate (public), projected into a file next to the token: a pod
# cannot mount a ConfigMap of the operator's namespace (statusserver explains the TLS set-up).
PROGRESS_CA_ANNOTATION = "conveyor.dev/progress-ca"

LABEL_PIPELINE = "conveyor.dev/pipeline"
LABEL_WORKLOAD = "conveyor.dev/workload"
LABEL_ATTEMPT = "conveyor.dev/attempt"
LABEL_STAGE = "conveyor.dev/stage"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
SERVING = "serve"

# The policy checks a Job or serving Deployment fails on purpose, each with its reason, as annotations
# checkov reads (scripts/checkov scans `conveyor render` output; no other check may fail).
CHECKOV_SKIPS = {
    "checkov.io/skip1": "CKV_K8S_11=no CPU limit on purpose: CFS quotas throttle torch's thread pools, "
    "which are sized to the CPUs the pod sees; the request reserves the CPU and memory is limited",
    "checkov.io/skip2": "CKV_K8S_15=the pull policy is the operator's (chart trainerImage.pullPolicy) or "
    "the pipeline's; IfNotPresent with versioned tags avoids re-pulling multi-GB trainer images per pod",
    "checkov.io/skip3": "CKV_K8S_43=the image is the chart's versioned tag or the pipeline's "
    "spec.code.image, which may be a digest (repo@sha256:...)",
}


@dataclass(frozen=True)
class Owner:
    """The pipeline the children belong to."""

    name: str
    namespace: str
    uid: str
    spec: TrainingPipelineSpec


@dataclass(frozen=True)
class Settings:
    """Operator-wide settings (from the chart): the default image and the progress endpoint."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str | None = None
    progress_url: str | None = None  # e.g. https://conveyor-progress.conveyor-system.svc:8081
    progress_ca: str | None = None  # PEM of the CA pods verify the (https) progress endpoint with
    python: str = "python"


# --- names and metadata -------------------------------------------------------------------------


def dns_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1035 label from `parts`; too long ones keep a readable prefix and a stable hash."""
    text = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    if not text or not text[0].isalpha():
        text = f"c-{text}"
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: limit - 9].rstrip('-')}-{digest}"


def label_value(value: str) -> str:
    """A label value (<= 63 characters, alphanumeric at both ends)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", value)
    if len(text) > 63:
        text = f"{text[:54]}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    return text.strip("-._")


def job_name(pipeline: str, name: str, attempt: int) -> str:
    """The Job (and headless Service) of attempt `attempt` of workload `name`:
    `<pipeline>-<workload>-<attempt>`; 52 characters at most, so that Indexed Job pod hostnames
    (`<job>-<index>`) and the pods' generated names stay within 63."""
    return dns_name(pipeline, f"{name}-{attempt}", limit=52)


def serving_name(pipeline: str) -> str:
    return dns_name(pipeline, "serve", limit=52)


def selector(owner: Owner, workload: str, attempt: int | None = None) -> dict[str, str]:
    labels = {LABEL_PIPELINE: label_value(owner.name), LABEL_WORKLOAD: label_value(workload)}
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    return labels


def labels(owner: Owner, stage: str, workload: str, attempt: int | None = None) -> dict[str, str]:
    extra = dict(owner.spec.scheduling.labels or {})
    return {
        **extra,
        "app.kubernetes.io/name": "conveyor",
        "app.kubernetes.io/instance": label_value(owner.name),
        "app.kubernetes.io/component": stage,
        "app.kubernetes.io/part-of": "conveyor",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        LABEL_STAGE: stage,
        **selector(owner, workload, attempt),
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(owner: Owner, name: str, object_labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": dict(object_labels),
        "ownerReferences": [owner_reference(owner)],
    }


# --- pod pieces ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pieces:
    """What one concern adds to a pod: environment, Secrets as environment, volumes and their mounts."""

    env: tuple[dict[str, Any], ...] = ()
    env_from: tuple[dict[str, Any], ...] = ()
    volumes: tuple[dict[str, Any], ...] = ()
    mounts: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Storage:
    root: str  # the run root as the container sees it
    volumes: tuple[dict[str, Any], ...]
    mounts: tuple[dict[str, Any], ...]


def provisioned_claim_name(pipeline: str) -> str:
    """The claim the operator provisions for a pipeline without `storage.uri`."""
    return dns_name(pipeline, "artifacts", limit=63)


def storage(owner: Owner) -> Storage:
    uri = owner.spec.storage.uri
    mount: dict[str, Any] = {"name": "artifacts", "mountPath": ARTIFACTS_MOUNT}
    if uri:  # pvc://CLAIM[/PATH], the only form the spec accepts
        claim, path = split_pvc(uri)
        if path:
            mount["subPath"] = path
    else:
        claim = provisioned_claim_name(owner.name)
    volume: dict[str, Any] = {"name": "artifacts", "persistentVolumeClaim": {"claimName": claim}}
    return Storage(f"{ARTIFACTS_MOUNT}/{owner.name}", (volume,), (mount,))


def note_provisioned_storage(status: PipelineStatus, spec: TrainingPipelineSpec, pipeline: str) -> None:
    """Status says where the artifacts of a pipeline without `storage.uri` live: its provisioned claim."""
    if spec.storage.uri is None and status.artifacts is not None and status.artifacts.root is None:
        status.artifacts.root = f"{PVC_SCHEME}{provisioned_claim_name(pipeline)}"


def artifacts_claim(owner: Owner) -> dict[str, Any] | None:
    """The PersistentVolumeClaim the operator provisions when `storage.uri` is not set (else None):
    shared by every stage pod of the pipeline, owned by it, from the default StorageClass."""
    if owner.spec.storage.uri:
        return None
    spec = owner.spec
    concurrent = (
        spec.resources.workers > 1
        or (spec.tuning is not None and spec.tuning.parallelism > 1)
        or (spec.serving is not None and (spec.serving.replicas > 1 or spec.serving.autoscaling is not None))
    )
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(
            owner, provisioned_claim_name(owner.name), labels(owner, "storage", "artifacts")
        ),
        "spec": {
            "accessModes": ["ReadWriteMany" if concurrent else "ReadWriteOnce"],
            "resources": {"requests": {"storage": PROVISIONED_SIZE}},
        },
    }


def data_source(owner: Owner, workload: Workload) -> Pieces:
    """What the pod that reads `data.source` (prepare; later stages read the prepared split) needs: a
    pvc:// source's claim mounted read-only where the trainer looks for it, and the credentials Secret."""
    if workload.command != "prepare":
        return Pieces()
    data = owner.spec.data
    env_from: tuple[dict[str, Any], ...] = ()
    if data.credentials_secret:
        env_from = ({"secretRef": {"name": data.credentials_secret}},)
    if not data.source.startswith(PVC_SCHEME):
        return Pieces(env_from=env_from)
    claim, _ = split_pvc(data.source)
    volume = {"name": "data-source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    mount = {"name": "data-source", "mountPath": f"{DEFAULT_PVC_ROOT}/{claim}", "readOnly": True}
    env = ({"name": PVC_ROOT_ENV, "value": DEFAULT_PVC_ROOT},)
    return Pieces(env, env_from, (volume,), (mount,))


def code_archive(owner: Owner) -> str | None:
    """Where a pod finds the packed code of `code.configMap` (None without one)."""
    return f"{CODE_MOUNT}/{CODE_ARCHIVE_KEY}" if owner.spec.code.config_map else None


def code_pieces(owner: Owner) -> Pieces:
    """`code.configMap` mounted read-only (every pod of the pipeline)."""
    name = owner.spec.code.config_map
    if not name:
        return Pieces()
    volume = {"name": "code", "configMap": {"name": name}}
    return Pieces(volumes=(volume,), mounts=({"name": "code", "mountPath": CODE_MOUNT, "readOnly": True},))


def container_security_context() -> dict[str, Any]:
    """PodSecurity `restricted`: non-root, no privilege escalation, no capabilities, RuntimeDefault;
    and a read-only root filesystem (the images need only /tmp, an emptyDir here, and HOME is /tmp)."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(workload: Workload) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": workload.cpu, "memory": workload.memory}
    limits: dict[str, Any] = {"memory": workload.memory}
    if workload.gpu:
        requests["nvidia.com/gpu"] = str(workload.gpu)
        limits["nvidia.com/gpu"] = str(workload.gpu)
    return {"requests": requests, "limits": limits}


def env_list(values: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def progress_pieces(settings: Settings) -> Pieces:
    """Pushing progress to the operator with an audience-bound token."""
    if not settings.progress_url:
        return Pieces()
    env: tuple[dict[str, Any], ...] = (
        {"name": PROGRESS_URL_ENV, "value": settings.progress_url},
        {"name": PROGRESS_TOKEN_FILE_ENV, "value": f"{TOKEN_DIR}/token"},
    )
    sources: list[dict[str, Any]] = []
    if settings.progress_ca:
        env = (*env, {"name": PROGRESS_CA_FILE_ENV, "value": f"{TOKEN_DIR}/ca.crt"})
        ca = {
            "path": "ca.crt",
            "fieldRef": {"fieldPath": f"metadata.annotations['{PROGRESS_CA_ANNOTATION}']"},
        }
        sources.append({"downwardAPI": {"items": [ca]}})
    volume = {
        "name": "conveyor-token",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": TOKEN_AUDIENCE,
                        "expirationSeconds": TOKEN_SECONDS,
                        "path": "token",
                    }
                },
                *sources,
            ]
        },
    }
    mount = {"name": "conveyor-token", "mountPath": TOKEN_DIR, "readOnly": True}
    return Pieces(env, (), (volume,), (mount,))


def pod_spec(
    owner: Owner,
    settings: Settings,
    container: dict[str, Any],
    restart_policy: str,
    extra: Pieces = Pieces(),
) -> dict[str, Any]:
    """A pod spec around `container`: storage, progress token, `extra` (e.g. the data source), security
    and scheduling pass-through."""
    sched = owner.spec.scheduling
    store = storage(owner)
    progress = progress_pieces(settings)
    code = code_pieces(owner)
    container = {
        **container,
        "image": owner.spec.code.image or settings.image,
        "securityContext": container_security_context(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "volumeMounts": [
            *store.mounts,
            *progress.mounts,
            *code.mounts,
            *extra.mounts,
            {"name": "tmp", "mountPath": "/tmp"},
            *container.get("volumeMounts", []),
        ],
        "env": [*container.get("env", []), *progress.env, *extra.env],
    }
    pull = sched.image_pull_policy or settings.image_pull_policy
    if pull:
        container["imagePullPolicy"] = pull
    if extra.env_from:
        container["envFrom"] = list(extra.env_from)
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [
            *store.volumes,
            *progress.volumes,
            *code.volumes,
            *extra.volumes,
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    optional = {
        "serviceAccountName": sched.service_account_name,
        "nodeSelector": sched.node_selector,
        "tolerations": sched.tolerations,
        "affinity": sched.affinity,
        "priorityClassName": sched.priority_class_name,
        "schedulerName": sched.scheduler_name,
    }
    spec.update({k: v for k, v in optional.items() if v})
    return spec


def pod_template(
    owner: Owner, settings: Settings, object_labels: Mapping[str, str], spec: dict[str, Any]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": dict(object_labels)}
    if owner.spec.scheduling.annotations:
        meta["annotations"] = dict(owner.spec.scheduling.annotations)
    if settings.progress_url and settings.progress_ca:
        meta.setdefault("annotations", {})[PROGRESS_CA_ANNOTATION] = settings.progress_ca
    return {"metadata": meta, "spec": spec}


# --- workloads ----------------------------------------------------------------------------------


def pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": [EXIT_INVALID_INPUT],
                },
            },
        ]
    }


def master_address(owner: Owner, workload: Workload) -> str:
    """Rank 0's stable DNS name: pod hostname `<job>-0` under the headless Service `<job>`."""
    name = job_name(owner.name, workload.name, workload.attempt)
    return f"{name}-0.{name}"


def trainer_container(owner: Owner, settings: Settings, workload: Workload) -> dict[str, Any]:
    root = storage(owner).root
    workload = replace(workload, pipeline=owner.name, code_archive=code_archive(owner))
    if workload.distributed:
        argv, env = command_argv(
            workload,
            root,
            master_address(owner, workload),
            DEFAULT_MASTER_PORT,
            node_rank="$(PET_NODE_RANK)",
            python=settings.python,
        )
        env.pop("PET_NODE_RANK")
        index = {"fieldRef": {"fieldPath": COMPLETION_INDEX}}
        env_entries = [{"name": "PET_NODE_RANK", "valueFrom": index}, *env_list(env)]
        if workload.processes_per_worker == 1 and workload.user_command is None:
            # One process per pod: the trainer is the pod's process, rank = the completion index
            # (rank 0 hosts the store, `conveyor.trainer.distributed`). A torchrun agent would only
            # import torch once more before starting it, and hold the pod after it exits.
            argv = python_argv(workload, root, python=settings.python)
            env_entries += [
                {"name": "RANK", "valueFrom": index},
                *env_list({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}),
            ]
    else:
        argv, env = command_argv(workload, root, python=settings.python)
        env_entries = env_list(env)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "command": argv[:1],
        "args": argv[1:],
        "env": env_entries,
        "resources": resources(workload),
    }
    if workload.distributed:
        container["ports"] = [{"name": "rendezvous", "containerPort": DEFAULT_MASTER_PORT}]
    return container


def workload_job(owner: Owner, settings: Settings, workload: Workload) -> dict[str, Any]:
    """The Job of one workload attempt (Indexed, with a subdomain, when distributed)."""
    name = job_name(owner.name, workload.name, workload.attempt)
    object_labels = labels(owner, workload.stage, workload.name, workload.attempt)
    container = trainer_container(owner, settings, workload)
    pod = pod_spec(owner, settings, container, "Never", data_source(owner, workload))
    workers = workload.workers if workload.distributed else 1
    job_spec: dict[str, Any] = {
        "completions": workers,
        "parallelism": workers,
        "backoffLimit": 0,
        "podFailurePolicy": pod_failure_policy(),
        "template": pod_template(owner, settings, object_labels, pod),
    }
    if workload.distributed:
        job_spec["completionMode"] = "Indexed"
        pod["subdomain"] = name
    sched = owner.spec.scheduling
    job_labels = dict(object_labels)
    if sched.queue_name:
        job_labels[LABEL_QUEUE] = sched.queue_name
        job_spec["suspend"] = True
    if owner.spec.managed_by:
        job_spec["managedBy"] = owner.spec.managed_by
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**metadata(owner, name, job_labels), "annotations": dict(CHECKOV_SKIPS)},
        "spec": job_spec,
    }


def headless_service(owner: Owner, workload: Workload) -> dict[str, Any]:
    name = job_name(owner.name, workload.name, workload.attempt)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, name, labels(owner, workload.stage, workload.name, workload.attempt)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector(owner, workload.name, workload.attempt),
            "ports": [{"name": "rendezvous", "port": DEFAULT_MASTER_PORT, "targetPort": DEFAULT_MASTER_PORT}],
        },
    }


def workload_objects(owner: Owner, settings: Settings, workload: Workload) -> list[dict[str, Any]]:
    """Everything one workload attempt needs, in apply order (the Service first: rank-0 DNS)."""
    job = workload_job(owner, settings, workload)
    return [headless_service(owner, workload), job] if workload.distributed else [job]


# --- serving ------------------------------------------------------------------------------------


def serving_url(owner: Owner, serving: ServingSpec) -> str:
    return f"http://{serving_name(owner.name)}.{owner.namespace}.svc:{serving.port}"


def serving_objects(
    owner: Owner, settings: Settings, model: str, serving: ServingSpec
) -> list[dict[str, Any]]:
    """Deployment + Service (+ HorizontalPodAutoscaler) serving the artifact directory `model`."""
    name = serving_name(owner.name)
    object_labels = labels(owner, SERVING, SERVING)
    root = storage(owner).root
    served = serve_argv(model, serving, root, name=owner.name)
    argv = [settings.python, "-m", TRAINER_MODULE, *served, "--host", "0.0.0.0"]
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5}
    # Liveness: the event loop answers at all (readiness also goes false while draining on SIGTERM).
    live = {
        "httpGet": {"path": "/v2/health/live", "port": "http"},
        "periodSeconds": 10,
        "failureThreshold": 6,
    }
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "command": argv[:1],
        "args": argv[1:],
        "env": [
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "CONVEYOR_MODEL", "value": model},
            *env_list({sdk_env.CODE_ARCHIVE: archive} if (archive := code_archive(owner)) else {}),
        ],
        "ports": [{"name": "http", "containerPort": serving.port}],
        "readinessProbe": probe,
        "livenessProbe": live,
        "resources": {
            "requests": {"cpu": owner.spec.resources.cpu, "memory": owner.spec.resources.memory},
            "limits": {"memory": owner.spec.resources.memory},
        },
    }
    pod = pod_spec(owner, settings, container, "Always")
    template = pod_template(owner, settings, object_labels, pod)
    template["metadata"].setdefault("annotations", {})["conveyor.dev/model"] = model
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(owner, SERVING)},
        "template": template,
    }
    if serving.autoscaling is None:
        deployment_spec["replicas"] = serving.replicas
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**metadata(owner, name, object_labels), "annotations": dict(CHECKOV_SKIPS)},
            "spec": deployment_spec,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(owner, name, object_labels),
            "spec": {
                "selector": selector(owner, SERVING),
                "ports": [{"name": "http", "port": serving.port, "targetPort": "http"}],
            },
        },
    ]
    scaling = serving.autoscaling
    if scaling is not None:
        objects.append(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": metadata(owner, name, object_labels),
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": scaling.min_replicas,
                    "maxReplicas": scaling.max_replicas,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {
                                    "type": "Utilization",
                                    "averageUtilization": scaling.target_cpu_utilization,
                                },
                            },
                        }
                    ],
                },
            }
        )
    return objects

"""KWOK configuration: the simulated GPU nodes and the pod stages that drive their pods.

Pods on KWOK nodes never run. The nodes are tainted ``nvidia.com/gpu`` (``GPU_TAINT``): pods asking
for a GPU land there, others only with ``SIMULATED`` (nodeSelector ``type=kwok`` + the toleration).
Stages move them: scheduled -> Running (Ready) -> Succeeded/Failed.
Tests steer a pod through annotations on the pod (or the Job's pod template):

``conveyor.dev/sim-exit-code``            the container's exit code; non-zero ends in phase Failed,
                                          "0" ends in Succeeded. Pods owned by a Job complete even
                                          without it (exit 0); other pods without it keep running
                                          (like a server, e.g. a Deployment's pods).
``conveyor.dev/sim-delay``                how long the pod stays Running before it terminates, as a Go
                                          duration ("1500ms", "3s"); default 500ms.
``conveyor.dev/sim-termination-message``  the container's termination message (state.terminated.message).
"""

from __future__ import annotations

from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
#: The taint of the simulated GPU nodes, as GPU node pools carry it on real clusters (GKE, EKS, AKS):
#: only pods asking for ``nvidia.com/gpu`` land there (the API server's ExtendedResourceToleration
#: admission adds the toleration), every other pod goes to the local node, where pods really run.
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
#: Pod placement for tests that simulate pods asking for no GPU on the KWOK nodes anyway.
SIMULATED = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
}
EXIT_CODE = "conveyor.dev/sim-exit-code"
DELAY = "conveyor.dev/sim-delay"
TERMINATION_MESSAGE = "conveyor.dev/sim-termination-message"
NODE_LABEL = "type"
NODE_LABEL_VALUE = "kwok"

_NOT_DELETED = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
_RUNNING_READY = [
    {"key": ".status.phase", "operator": "In", "values": ["Running"]},
    {
        "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
        "operator": "In",
        "values": ["True"],
    },
]


def _ann(key: str) -> str:
    return f'.metadata.annotations["{key}"]'


_TERMINATED = """\
{{ $now := Now }}
{{ $msg := "" }}{{ with .metadata.annotations }}{{ with index . "@MSG@" }}{{ $msg = . }}{{ end }}{{ end }}
{{ $code := "0" }}{{ with .metadata.annotations }}{{ with index . "@CODE@" }}{{ $code = . }}{{ end }}{{ end }}
conditions:
- {type: Ready, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: {{ $code }}
      reason: @REASON@
      message: {{ $msg | Quote }}
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
phase: @PHASE@
"""


def _pod_stage(
    name: str, match: list[dict[str, Any]], next_: dict[str, Any], delay: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A KWOK Stage for pods: when a pod matches every expression of `match` (after `delay`), `next_`."""
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {"matchExpressions": match},
    }
    if delay is not None:
        spec["delay"] = delay
    spec["next"] = next_
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}


def _terminate_stage(name: str, selector: list[dict[str, Any]], phase: str, reason: str) -> dict[str, Any]:
    template = (
        _TERMINATED.replace("@MSG@", TERMINATION_MESSAGE)
        .replace("@CODE@", EXIT_CODE)
        .replace("@REASON@", reason)
        .replace("@PHASE@", phase)
    )
    return _pod_stage(
        name,
        [_NOT_DELETED, *_RUNNING_READY, *selector],
        {"statusTemplate": template},
        {"durationMilliseconds": 500, "durationFrom": {"expressionFrom": _ann(DELAY)}},
    )


_CREATE_TEMPLATE = """\
{{ $now := Now }}
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: PodReadyToStartContainers, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
{{ range .spec.readinessGates }}
- {type: {{ .conditionType | Quote }}, status: "True", lastTransitionTime: {{ $now | Quote }}}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""


def pod_stages() -> list[dict[str, Any]]:
    """The complete pod stage set (supplying any pod stage replaces all of KWOK's defaults)."""
    start = _pod_stage(
        "conveyor-pod-start",
        [_NOT_DELETED, {"key": ".status.podIP", "operator": "DoesNotExist"}],
        {
            "event": {"type": "Normal", "reason": "Started", "message": "Started container (simulated)"},
            "statusTemplate": _CREATE_TEMPLATE,
        },
    )
    owned_by_job = {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]}
    succeed_job = _terminate_stage(
        "conveyor-pod-succeed-job",
        [owned_by_job, {"key": _ann(EXIT_CODE), "operator": "DoesNotExist"}],
        "Succeeded",
        "Completed",
    )
    succeed_zero = _terminate_stage(
        "conveyor-pod-succeed",
        [{"key": _ann(EXIT_CODE), "operator": "In", "values": ["0"]}],
        "Succeeded",
        "Completed",
    )
    fail = _terminate_stage(
        "conveyor-pod-fail",
        [
            {"key": _ann(EXIT_CODE), "operator": "Exists"},
            {"key": _ann(EXIT_CODE), "operator": "NotIn", "values": ["0"]},
        ],
        "Failed",
        "Error",
    )
    # A kubelet stops a deleted pod's containers (SIGTERM: exit 143) and reports phase Failed; a pod
    # with finalizers (a Job's tracking finalizer) must get there, or a Job with a podFailurePolicy,
    # which only counts terminal pods, waits for it forever (evicted or node-drained pods).
    stopped = _pod_stage(
        "conveyor-pod-stop-deleted",
        [
            {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
            {"key": ".metadata.finalizers", "operator": "Exists"},
            {"key": ".status.phase", "operator": "In", "values": ["Pending", "Running"]},
        ],
        {
            "statusTemplate": "\n".join(
                line for line in _TERMINATED.splitlines() if "@MSG@" not in line and "@CODE@" not in line
            )
            .replace("$msg", '""')
            .replace("$code", "143")
            .replace("@REASON@", "Error")
            .replace("@PHASE@", "Failed")
        },
    )
    delete = _pod_stage(
        "conveyor-pod-delete",
        [
            {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
            {"key": ".metadata.finalizers", "operator": "DoesNotExist"},
        ],
        {"delete": True},
    )
    return [start, succeed_job, succeed_zero, fail, stopped, delete]


def gpu_node(
    name: str,
    gpus: int,
    product: str,
    cpu: str = "64",
    memory: str = "512Gi",
    gpu_memory_mib: int = 81559,
) -> dict[str, Any]:
    """A KWOK-managed node that advertises ``gpus`` x ``nvidia.com/gpu`` (GPU feature-discovery labels),
    tainted ``nvidia.com/gpu=present:NoSchedule``."""
    resources = {
        "cpu": cpu,
        "memory": memory,
        "pods": "110",
        "nvidia.com/gpu": str(gpus),
        "ephemeral-storage": "1Ti",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                NODE_LABEL: NODE_LABEL_VALUE,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "conveyor-sim-gpu",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.count": str(gpus),
                "nvidia.com/gpu.memory": str(gpu_memory_mib),
            },
        },
        "spec": {"taints": [dict(GPU_TAINT)]},
        "status": {"allocatable": resources, "capacity": dict(resources)},
    }

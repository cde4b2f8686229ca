"""Registration and heartbeats of the local node (a Node object plus its Lease)."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

LOCAL_NODE_LABEL = "conveyor.dev/local-node"


def _memory_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 8 << 20


def _conditions(t: str) -> list[dict[str, Any]]:
    def cond(kind: str, status: str, reason: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "lastHeartbeatTime": t,
            "lastTransitionTime": t,
        }

    return [
        cond("Ready", "True", "KubeletReady"),
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID"),
    ]


def register(core: Any, name: str, kube_version: str, kubelet_port: int = 0, gpus: int = 0) -> None:
    """Create (or refresh) the local node: untainted, so every pod that asks for no GPU lands here by
    default (the GPU nodes are tainted ``nvidia.com/gpu``, as on real clusters). Select it explicitly
    with the label ``conveyor.dev/local-node=true``.

    ``gpus`` > 0 advertises that many ``nvidia.com/gpu`` so pod specs that ask for GPUs can run here
    (on the CPU: nothing is attached)."""
    arch = "amd64" if platform.machine() == "x86_64" else platform.machine()
    resources = {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{_memory_kib()}Ki",
        "pods": "110",
        "ephemeral-storage": "100Gi",
    }
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                LOCAL_NODE_LABEL: "true",
                "type": "local",
            },
        },
        "spec": {},
    }
    try:
        core.create_node(node)
    except ApiException as e:
        if e.status != 409:
            raise
    t = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "capacity": resources,
        "allocatable": resources,
        "conditions": _conditions(t),
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": platform.release(),
            "osImage": "conveyor local node", "containerRuntimeVersion": "local://processes",
            "kubeletVersion": kube_version, "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": arch,
        },
    }  # fmt: skip
    core.patch_node_status(name, {"status": status})


def heartbeat(api: client.ApiClient, name: str) -> None:
    """Renew the node Lease and refresh the Ready condition."""
    core: Any = client.CoreV1Api(api)
    coord: Any = client.CoordinationV1Api(api)
    now = datetime.now(UTC)
    t = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    core.patch_node_status(name, {"status": {"conditions": _conditions(t)}})
    renew = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": renew},
    }
    try:
        coord.patch_namespaced_lease(name, "kube-node-lease", {"spec": body["spec"]})
    except ApiException as e:
        if e.status != 404:
            raise
        coord.create_namespaced_lease("kube-node-lease", body)

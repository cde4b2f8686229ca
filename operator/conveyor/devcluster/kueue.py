"""Kueue in the test bed: gang admission of Jobs against a GPU quota, as on a real cluster.

Kueue's controller-manager (built by ``scripts/build-control-plane`` from the pinned
``sigs.k8s.io/kueue`` module) runs as a local process against the API server, like KWOK. Its webhooks
are not disabled: Kueue's Job webhook is what suspends a queued Job at create and its validating
webhooks are what reject a bad ClusterQueue, so a test bed without them would admit things a real
cluster refuses. They run as Kueue runs them in a cluster, with its own internal certificate
management (a CA and serving certificate in the Secret ``kueue-webhook-server-cert``, injected into
the webhook configurations and the conversion webhooks of five CRDs). The API server reaches a
webhook through its Service's ClusterIP; the Service ``kueue-webhook-service`` has no selector and
its ClusterIP is a loopback address (``127.203.0.0/24``), so Kueue's webhook server simply binds
that address. Only the webhooks of what this Kueue manages are registered (``batch/v1`` Jobs and
Kueue's own kinds): a webhook for pods or Deployments that Kueue does not serve would make the API
server refuse every such object.

The CRDs, the conversion patches and the webhook manifests are Kueue's own, copied from the pinned
module into ``<bin>/kueue-assets/`` at build time; here they get the names its kustomize install gives them
(prefix ``kueue-``, namespace ``kueue-system``) and the Service port.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

NAMESPACE = "kueue-system"
SERVICE = "kueue-webhook-service"
SECRET = "kueue-webhook-server-cert"
#: The Secret's keys, which a pod's Secret volume would put in Kueue's cert dir.
CERT_FILES = ("ca.crt", "tls.key", "tls.crt")
GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: The test bed's queues: one flavor (the simulated GPU nodes are one pool), a ClusterQueue with the
#: cluster's GPUs as quota, and a LocalQueue of that name in ``default``.
FLAVOR = "conveyor-default"
CLUSTER_QUEUE = "conveyor"
LOCAL_QUEUE = "conveyor"
#: Groups whose webhooks this Kueue serves (its only integration is ``batch/job``).
SERVED_GROUPS = {"batch", GROUP}
#: CPU and memory quota of the test bed's ClusterQueue: far above what tests ask, so only GPUs queue.
#: Kueue refuses a workload whose requests name a resource its ClusterQueue does not cover.
AMPLE_CPU = "10k"
AMPLE_MEMORY = "100Ti"


def asset_dir(bin_dir: Path) -> Path:
    return bin_dir / "kueue-assets"


def _service_ref(port: int, path: str) -> dict[str, Any]:
    return {"namespace": NAMESPACE, "name": SERVICE, "port": port, "path": path}


def crds(assets: Path, port: int) -> list[dict[str, Any]]:
    """Kueue's CRDs; those its install gives a conversion webhook get it, pointed at our Service."""
    conversions: dict[str, dict[str, Any]] = {}
    for patch in sorted((assets / "conversion").glob("*.yaml")):
        doc = yaml.safe_load(patch.read_text())
        conversion = copy.deepcopy(doc["spec"]["conversion"])
        ref = conversion["webhook"]["clientConfig"]["service"]
        conversion["webhook"]["clientConfig"]["service"] = _service_ref(port, ref["path"])
        conversions[doc["metadata"]["name"]] = conversion
    found = []
    for path in sorted((assets / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc["metadata"]["name"] in conversions:
                doc["spec"]["conversion"] = conversions[doc["metadata"]["name"]]
            found.append(doc)
    return found


def webhook_configurations(assets: Path, port: int) -> list[dict[str, Any]]:
    """The mutating and validating webhook configurations, only for what this Kueue serves."""
    configs = []
    for doc in yaml.safe_load_all((assets / "webhooks.yaml").read_text()):
        if not doc:
            continue
        webhooks = []
        for hook in doc["webhooks"]:
            groups = {g for rule in hook.get("rules", []) for g in rule.get("apiGroups", [])}
            if groups and groups <= SERVED_GROUPS:
                hook = copy.deepcopy(hook)
                hook["clientConfig"]["service"] = _service_ref(port, hook["clientConfig"]["service"]["path"])
                webhooks.append(hook)
        if webhooks:
            name = f"kueue-{doc['metadata']['name']}"
            configs.append({**doc, "metadata": {"name": name}, "webhooks": webhooks})
    return configs


def webhook_service(port: int) -> list[dict[str, Any]]:
    """Kueue's namespace, the selector-less Service the API server resolves the webhooks through (its
    ClusterIP), and the empty Secret Kueue's certificate management fills (its install creates it too)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {"ports": [{"name": "webhook", "port": port, "targetPort": port, "protocol": "TCP"}]},
        },
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NAMESPACE}},
    ]


def configuration(
    *, webhook_host: str, webhook_port: int, cert_dir: Path, health_port: int, metrics_port: int
) -> dict[str, Any]:
    """Kueue's Configuration: its install's defaults, on loopback ports, with only the Job integration."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"host": webhook_host, "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": SERVICE,
            "webhookSecretName": SECRET,
        },
        "integrations": {"frameworks": ["batch/job"]},
    }


def resource_flavor(name: str = FLAVOR) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": name}}


def cluster_queue(name: str, gpus: int, flavor: str = FLAVOR) -> dict[str, Any]:
    """A ClusterQueue for every namespace whose quota is ``gpus`` nvidia.com/gpu (CPU/memory ample)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [
                {
                    "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                    "flavors": [
                        {
                            "name": flavor,
                            "resources": [
                                {"name": "cpu", "nominalQuota": AMPLE_CPU},
                                {"name": "memory", "nominalQuota": AMPLE_MEMORY},
                                {"name": "nvidia.com/gpu", "nominalQuota": gpus},
                            ],
                        }
                    ],
                }
            ],
        },
    }


def local_queue(name: str, namespace: str, cluster_queue_name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cluster_queue_name},
    }

"""Kueue's manifests as the test bed installs them, from the assets build-control-plane copied out of
the pinned module: named as Kueue's own install names them, routed to the webhook Service, and only
the webhooks of what this Kueue serves (a registered webhook nobody serves refuses every such object)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.devcluster import kueue
from conveyor.devcluster.cluster import default_bin_dir

PORT = 40123


@pytest.fixture(scope="module")
def assets() -> Path:
    path = kueue.asset_dir(default_bin_dir())
    if not (path / "crds").is_dir():
        pytest.skip(f"Kueue's assets not built in {path}; run scripts/build-control-plane")
    return path


def test_crds_with_conversion_webhooks_point_at_the_webhook_service(assets: Path) -> None:
    crds = {c["metadata"]["name"]: c for c in kueue.crds(assets, PORT)}
    assert {f"{k}.kueue.x-k8s.io" for k in ("clusterqueues", "localqueues", "workloads")} <= set(crds)
    converted = {name for name, crd in crds.items() if crd["spec"].get("conversion")}
    assert converted == {
        f"{k}.kueue.x-k8s.io"
        for k in ("clusterqueues", "cohorts", "localqueues", "multikueueclusters", "workloads")
    }
    for name in converted:
        conversion = crds[name]["spec"]["conversion"]
        assert conversion["strategy"] == "Webhook"
        assert conversion["webhook"]["clientConfig"]["service"] == {
            "namespace": kueue.NAMESPACE,
            "name": kueue.SERVICE,
            "port": PORT,
            "path": "/convert",
        }
    storage = [v["name"] for v in crds["clusterqueues.kueue.x-k8s.io"]["spec"]["versions"] if v["storage"]]
    assert storage == [kueue.VERSION]


def test_only_served_webhooks_are_registered(assets: Path) -> None:
    configs = {c["metadata"]["name"]: c for c in kueue.webhook_configurations(assets, PORT)}
    assert set(configs) == {"kueue-mutating-webhook-configuration", "kueue-validating-webhook-configuration"}
    assert configs["kueue-mutating-webhook-configuration"]["kind"] == "MutatingWebhookConfiguration"
    paths = set()
    for config in configs.values():
        for hook in config["webhooks"]:
            groups = {g for rule in hook["rules"] for g in rule["apiGroups"]}
            assert groups <= {"batch", kueue.GROUP}, hook["name"]
            service = hook["clientConfig"]["service"]
            assert (service["namespace"], service["name"], service["port"]) == (
                kueue.NAMESPACE,
                kueue.SERVICE,
                PORT,
            )
            paths.add(service["path"])
    assert {"/mutate-batch-v1-job", "/validate-batch-v1-job"} <= paths
    assert "/validate-kueue-x-k8s-io-v1beta2-clusterqueue" in paths
    assert not any("pod" in p or "deployment" in p for p in paths)


def test_cluster_queue_covers_what_pods_request() -> None:
    queue = kueue.cluster_queue("q", 3)
    (group,) = queue["spec"]["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    (flavor,) = group["flavors"]
    assert flavor["name"] == kueue.FLAVOR
    assert {"name": "nvidia.com/gpu", "nominalQuota": 3} in flavor["resources"]
    assert queue["spec"]["namespaceSelector"] == {}
    assert kueue.local_queue("l", "ns", "q")["spec"] == {"clusterQueue": "q"}

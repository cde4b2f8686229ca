"""The Helm chart: its CRD is the generated one, its RBAC has no wildcards, its pods are locked down,
and manifests/install.yaml is the chart as rendered (with the pinned helm, when it is built)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.devcluster.cluster import default_bin_dir
from conveyor.operator.kubernetes import builders

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "conveyor"


def test_chart_crd_is_the_generated_crd() -> None:
    generated = (REPO / "manifests" / "crd" / "trainingpipelines.conveyor.dev.yaml").read_text()
    assert (CHART / "crds" / "trainingpipelines.conveyor.dev.yaml").read_text() == generated, (
        "cp manifests/crd/trainingpipelines.conveyor.dev.yaml charts/conveyor/crds/ && scripts/render-install"
    )


def test_values_have_a_schema_entry() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def helm() -> str:
    path = default_bin_dir() / "helm"
    if not os.access(path, os.X_OK):
        pytest.skip(f"helm not built at {path}; run scripts/build-control-plane")
    return str(path)


def render(*sets: str) -> list[dict[str, Any]]:
    argv = [helm(), "template", "conveyor", str(CHART), "--namespace", "conveyor-system"]
    for value in sets:
        argv += ["--set", value]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={ml,research}",)])
def test_rbac_least_privilege(sets: tuple[str, ...]) -> None:
    objects = render(*sets)
    roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
    kinds = {(o["kind"], o["metadata"].get("namespace")) for o in roles}
    if sets:
        assert ("Role", "ml") in kinds and ("Role", "research") in kinds
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--namespace=ml" in args and "--namespace=research" in args


def test_operator_pod_is_locked_down() -> None:
    deployment = next(o for o in render() if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    readiness = {"path": "/healthz", "port": "progress", "scheme": "HTTPS"}  # the endpoint's TLS
    assert container["readinessProbe"]["httpGet"] == readiness
    assert "--progress-url=https://conveyor-progress.conveyor-system.svc:8081" in container["args"]
    assert "--progress-tls-secret=conveyor-system/conveyor-progress-tls" in container["args"]


def test_progress_over_plain_http_only_when_tls_is_off() -> None:
    deployment = next(o for o in render("progress.tls.enabled=false") if o["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "progress"}
    assert "--progress-url=http://conveyor-progress.conveyor-system.svc:8081" in container["args"]
    assert not [a for a in container["args"] if a.startswith("--progress-tls-secret")]
    for obj in render():
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "conveyor"


def test_operator_network_policy() -> None:
    """Its own ports in (progress only from pipelines' pods, in any namespace, and its replicas), DNS,
    the API and its replicas' progress port out."""
    deployment = next(o for o in render() if o["kind"] == "Deployment")
    (policy,) = [o for o in render() if o["kind"] == "NetworkPolicy"]  # workloads' are opt-in
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    ports = {rule["ports"][0]["port"]: rule.get("from") for rule in spec["ingress"]}
    pods = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert set(ports) == {p["name"] for p in pods} == {"metrics", "progress", "health"}
    managed = {"matchLabels": {"app.kubernetes.io/managed-by": builders.FIELD_MANAGER}}
    replicas = {"matchLabels": spec["podSelector"]["matchLabels"]}
    # pipelines' pods, and the other replicas (a standby forwards epoch events to the leader)
    assert ports["progress"] == [{"namespaceSelector": {}, "podSelector": managed}, {"podSelector": replicas}]
    assert ports["metrics"] is None and ports["health"] is None
    egress = [port["port"] for rule in spec["egress"] for port in rule["ports"]]
    assert egress == [53, 53, 443, 6443, "progress"]
    assert spec["egress"][-1]["to"] == [{"podSelector": replicas}]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}  # advertised
    narrowed = render("networkPolicy.apiServerCIDRs={10.0.0.1/32}", "progress.enabled=false")
    spec = next(o for o in narrowed if o["kind"] == "NetworkPolicy")["spec"]
    assert spec["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert {rule["ports"][0]["port"] for rule in spec["ingress"]} == {"metrics", "health"}
    assert [port["port"] for rule in spec["egress"] for port in rule["ports"]] == [53, 53, 443, 6443]
    assert not [o for o in render("networkPolicy.enabled=false") if o["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize(
    ("sets", "namespaces"),
    [
        (("networkPolicy.workloads.namespaces={ml}",), ["ml"]),
        (("watchNamespaces={ml,research}", "networkPolicy.workloads.namespaces={other}"), ["ml", "research"]),
    ],
)
def test_workload_network_policies_are_opt_in_per_namespace(
    sets: tuple[str, ...], namespaces: list[str]
) -> None:
    policies = [
        o for o in render("networkPolicy.workloads.enabled=true", *sets)
        if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] != "conveyor-system"
    ]
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in policies] == [
        (ns, name) for ns in namespaces for name in ("conveyor-workloads", "conveyor-serving")
    ]
    managed = {"app.kubernetes.io/managed-by": builders.FIELD_MANAGER}
    workloads, serving = policies[:2]
    assert workloads["spec"]["podSelector"]["matchLabels"] == managed
    assert workloads["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": managed}}]}]
    stage = {builders.LABEL_STAGE: builders.SERVING}
    assert serving["spec"]["podSelector"]["matchLabels"] == {**managed, **stage}
    assert serving["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


def test_dashboard_config_map_for_the_grafana_sidecar() -> None:
    (config_map,) = [o for o in render() if o["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads((CHART / "dashboards" / "conveyor.json").read_text())
    assert json.loads(config_map["data"]["conveyor.json"]) == dashboard
    moved = render("dashboard.namespace=monitoring", "dashboard.annotations.grafana_folder=ML")
    (config_map,) = [o for o in moved if o["kind"] == "ConfigMap"]
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "ML"}
    assert not [o for o in render("dashboard.enabled=false") if o["kind"] == "ConfigMap"]


def test_serving_pods_are_scraped_with_the_service_monitor() -> None:
    assert not [o for o in render() if o["kind"] == "PodMonitor"]
    (monitor,) = [o for o in render("metrics.serviceMonitor.enabled=true") if o["kind"] == "PodMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"][builders.LABEL_STAGE] == builders.SERVING
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    scoped = render("metrics.serviceMonitor.enabled=true", "watchNamespaces={ml}")
    monitor = next(o for o in scoped if o["kind"] == "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}


def test_install_yaml_is_the_rendered_chart(tmp_path: Path) -> None:
    env = {**os.environ, "HELM": helm()}
    out = tmp_path / "install.yaml"
    subprocess.run(
        [str(REPO / "scripts" / "render-install"), str(out)], env=env, check=True, capture_output=True
    )
    rendered, committed = out.read_text(), (REPO / "manifests" / "install.yaml").read_text()
    assert rendered == committed, "manifests/install.yaml is stale: run scripts/render-install"


def test_replicas_with_leader_election_and_a_disruption_budget() -> None:
    objects = render("replicaCount=2")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    for arg in (
        "--leader-elect",
        "--leader-election-namespace=conveyor-system",
        "--leader-election-id=conveyor",
        "--lease-duration=15",
        "--renew-deadline=10",
        "--retry-period=2",
    ):
        assert arg in args
    (pdb,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert pdb["metadata"]["namespace"] == "conveyor-system"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert not [o for o in render() if o["kind"] == "PodDisruptionBudget"]  # one replica: no budget


def test_more_replicas_need_leader_election() -> None:
    argv = [helm(), "template", "conveyor", str(CHART), "--set", "replicaCount=2"]
    failed = subprocess.run([*argv, "--set", "leaderElection.enabled=false"], capture_output=True, text=True)
    assert failed.returncode != 0 and "needs leaderElection.enabled" in failed.stderr
    timings = '{"enabled":true,"leaseSeconds":10,"renewDeadlineSeconds":10,"retrySeconds":2}'
    failed = subprocess.run(
        [*argv, "--set-json", f"leaderElection={timings}"], capture_output=True, text=True
    )
    assert failed.returncode != 0 and "leaseSeconds > renewDeadlineSeconds" in failed.stderr
    single = render("leaderElection.enabled=false")
    deployment = next(o for o in single if o["kind"] == "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--leader-elect" not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={ml,research}",)])
def test_lease_rbac_is_this_releases_lease_only(sets: tuple[str, ...]) -> None:
    objects = render(*sets)
    lease_rules = [
        (role["kind"], role["metadata"].get("namespace"), rule)
        for role in objects
        if role["kind"] in ("ClusterRole", "Role")
        for rule in role["rules"]
        if "coordination.k8s.io" in rule["apiGroups"]
    ]
    assert lease_rules == [
        (
            "Role",
            "conveyor-system",
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ),
        (
            "Role",
            "conveyor-system",
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": ["conveyor"],
                "verbs": ["get", "update"],
            },
        ),
    ]
    binding = next(
        o
        for o in objects
        if o["kind"] == "RoleBinding" and o["roleRef"]["name"] == "conveyor-leader-election"
    )
    assert binding["metadata"]["namespace"] == "conveyor-system"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "conveyor", "namespace": "conveyor-system"}
    ]

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
    assert container["resources"]["limits"]["memory"]
    assert "--progress-url=http://conveyor-progress.conveyor-system.svc:8081" in container["args"]
    for obj in render():
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "conveyor"


def test_install_yaml_is_the_rendered_chart(tmp_path: Path) -> None:
    env = {**os.environ, "HELM": helm()}
    out = tmp_path / "install.yaml"
    subprocess.run(
        [str(REPO / "scripts" / "render-install"), str(out)], env=env, check=True, capture_output=True
    )
    rendered, committed = out.read_text(), (REPO / "manifests" / "install.yaml").read_text()
    assert rendered == committed, "manifests/install.yaml is stale: run scripts/render-install"

"""`conveyor apply` against a real API server: the code directory becomes the pipeline's ConfigMap,
owned by the pipeline, and the pipeline names it instead of the path."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from conveyor.cli import main
from conveyor.commands.apply import pack
from conveyor.operator.api import GROUP, PLURAL, VERSION
from conveyor.operator.kubernetes.builders import CODE_ARCHIVE_KEY
from tests.helpers.manifests import reference_document
from tests.helpers.operator_bed import install_crd

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def crd(kubectl: str, kubeconfig: Path) -> None:
    install_crd(kubectl, kubeconfig)


def manifest(tmp_path: Path, name: str = "coded") -> Path:
    (tmp_path / "src" / "mypkg").mkdir(parents=True)
    (tmp_path / "src" / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "src" / "mypkg" / "loop.py").write_text("def train(config):\n    pass\n")
    document = reference_document()
    document["metadata"]["name"] = name
    document["spec"]["code"] = {"path": "src", "image": "reg/me:1"}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_apply_ships_the_code_as_an_owned_config_map(
    crd: None, tmp_path: Path, kubeconfig: Path, namespace: str, k8s_api: Any
) -> None:
    path = manifest(tmp_path)
    assert main(["apply", "-f", str(path), "-n", namespace, "--kubeconfig", str(kubeconfig)]) == 0
    custom: Any = client.CustomObjectsApi(k8s_api)
    pipeline = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "coded")
    assert pipeline["spec"]["code"] == {"configMap": "coded-code", "image": "reg/me:1"}
    core: Any = client.CoreV1Api(k8s_api)
    config_map = core.read_namespaced_config_map("coded-code", namespace)
    assert base64.b64decode(config_map.binary_data[CODE_ARCHIVE_KEY]) == pack(tmp_path / "src")
    (owner,) = config_map.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("TrainingPipeline", "coded", pipeline["metadata"]["uid"])

    # The same directory again changes nothing; a changed one updates the ConfigMap in place.
    version = config_map.metadata.resource_version
    assert main(["apply", "-f", str(path), "-n", namespace, "--kubeconfig", str(kubeconfig)]) == 0
    assert core.read_namespaced_config_map("coded-code", namespace).metadata.resource_version == version
    (tmp_path / "src" / "mypkg" / "more.py").write_text("X = 1\n")
    assert main(["apply", "-f", str(path), "-n", namespace, "--kubeconfig", str(kubeconfig)]) == 0
    changed = core.read_namespaced_config_map("coded-code", namespace)
    assert base64.b64decode(changed.binary_data[CODE_ARCHIVE_KEY]) == pack(tmp_path / "src")


def test_apply_refuses_code_too_large_for_a_config_map_before_creating_anything(
    crd: None,
    tmp_path: Path,
    kubeconfig: Path,
    namespace: str,
    k8s_api: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = manifest(tmp_path, "big")
    (tmp_path / "src" / "weights.bin").write_bytes(os.urandom(1_100_000))
    assert main(["apply", "-f", str(path), "-n", namespace, "--kubeconfig", str(kubeconfig)]) == 2
    assert "spec.code.image" in capsys.readouterr().err
    custom: Any = client.CustomObjectsApi(k8s_api)
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []
    assert (
        client.CoreV1Api(k8s_api)
        .list_namespaced_config_map(namespace, label_selector="conveyor.dev/pipeline")
        .items
        == []
    )

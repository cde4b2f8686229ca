"""Fixtures of the operator e2e tests: the chart installed once per module (operator replicas 0), a
namespace enforcing PodSecurity `restricted` with an artifacts claim, the operator running against it,
and `kube`, the test bed's `Cluster` on that namespace."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.operator_bed import Cluster, OperatorProcess, install_chart, running_operator, sh


@pytest.fixture(scope="module")
def release(devcluster: Any, helm: str, kubectl: str, kubeconfig: Path) -> Iterator[str]:
    namespace = f"conveyor-system-{uuid.uuid4().hex[:5]}"
    install_chart(helm, kubeconfig, namespace, "--wait", "--timeout", "120s")
    try:
        yield namespace
    finally:
        sh(
            helm,
            "--kubeconfig",
            str(kubeconfig),
            "uninstall",
            "conveyor",
            "--namespace",
            namespace,
            check=False,
        )
        sh(
            kubectl,
            "--kubeconfig",
            str(kubeconfig),
            "delete",
            "namespace",
            namespace,
            "--wait=false",
            check=False,
        )


@pytest.fixture
def restricted(namespace: str, kubectl: str, kubeconfig: Path, k8s_api: Any) -> str:
    sh(
        kubectl,
        "--kubeconfig",
        str(kubeconfig),
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "--overwrite",
    )
    from kubernetes import client

    core: Any = client.CoreV1Api(k8s_api)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "conveyor-artifacts"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    return namespace


@pytest.fixture
def kube(restricted: str, k8s_api: Any, kubectl: str, kubeconfig: Path, wait_for: Any) -> Cluster:
    """The test's side of the `restricted` namespace: read pipelines, play the trainer, run kubectl."""
    return Cluster(k8s_api, restricted, wait_for, kubectl, kubeconfig)


@pytest.fixture
def operator(
    release: str, restricted: str, kubeconfig: Path, kubectl: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    with running_operator(release, restricted, kubeconfig, kubectl, tmp_path) as process:
        yield process

"""The operator's reconcile step against the real API server: a new pipeline's first step creates its
Job before any status write, a restart in between repeats nothing, and the next step writes the
status the first one decided (operator.py, "New pipelines first")."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from conveyor.devcluster import kwok
from conveyor.operator.api import GROUP, PLURAL, VERSION
from conveyor.operator.kubernetes.executor import Api
from conveyor.operator.kubernetes.operator import (
    FIRST_STATUS_DELAY,
    Controller,
    OperatorConfig,
    api_client,
    reflects_spec,
)
from tests.helpers.operator_bed import install_crd

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crd(kubectl: str, kubeconfig: Path) -> None:
    install_crd(kubectl, kubeconfig)


def controller(kubeconfig: Path, namespace: str) -> Controller:
    return Controller(Api(api_client(str(kubeconfig))), OperatorConfig(namespaces=(namespace,)))


def test_first_step_creates_the_job_then_the_next_writes_status(
    crd: None, k8s_api: Any, kubeconfig: Path, namespace: str
) -> None:
    custom: Any = client.CustomObjectsApi(k8s_api)
    batch: Any = client.BatchV1Api(k8s_api)
    manifest = yaml.safe_load((REPO / "manifests" / "examples" / "digits.yaml").read_text())
    body = copy.deepcopy(manifest)
    body["metadata"] = {"name": "first", "namespace": namespace}
    body["spec"]["scheduling"] = {"annotations": {"conveyor.dev/sim-delay": "1h"}, **kwok.SIMULATED}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    key = (namespace, "first")

    def jobs() -> list[Any]:
        return batch.list_namespaced_job(namespace, label_selector="conveyor.dev/pipeline=first").items

    def status() -> dict[str, Any]:
        got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "first")
        return dict(got.get("status") or {})

    assert controller(kubeconfig, namespace).step(key) == FIRST_STATUS_DELAY
    [job] = jobs()
    assert status() == {}, "the first step leaves its status to the next one"

    # An operator restarted here has lost the held decision: it decides again, from the spec alone,
    # and its apply of the same Job changes nothing on the server.
    restarted = controller(kubeconfig, namespace)
    assert restarted.step(key) == FIRST_STATUS_DELAY
    [again] = jobs()
    assert (again.metadata.uid, again.metadata.generation) == (job.metadata.uid, 1)
    assert status() == {}

    restarted.step(key)
    written = status()
    assert written["phase"] == "Preparing"
    assert written["observedGeneration"] == 1
    assert [(w["name"], w["attempt"]) for w in written["workloads"]] == [("prepare", 0)]
    assert len(jobs()) == 1
    assert reflects_spec(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "first"))


def test_a_status_for_an_older_generation_does_not_reflect_the_spec() -> None:
    def body(generation: int, observed: int | None) -> dict[str, Any]:
        status = {} if observed is None else {"phase": "Tuning", "observedGeneration": observed}
        return {"metadata": {"generation": generation}, "status": status}

    assert reflects_spec(body(3, 3))
    assert not reflects_spec(body(4, 3))  # the spec changed since: reconcile
    assert not reflects_spec(body(1, None))  # never reconciled
    assert not reflects_spec({"metadata": {}, "status": {"observedGeneration": 1}})

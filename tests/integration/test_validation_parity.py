"""Parity of local validation and the cluster, case by case over `tests.helpers.manifests.INVALID`.

Every manifest `conveyor validate` rejects is rejected by the real API server (`kubectl create`,
the generated CRD with its schema and CEL rules) naming the same field, or — for the few checks the
CRD cannot express (they need the trainer's config validators or the data catalogue) — accepted and
then failed by the operator's first reconcile step, before any pod, with exactly the local message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from conveyor.operator.api import GROUP, PLURAL, VERSION, rules
from conveyor.operator.kubernetes.executor import Api
from conveyor.operator.kubernetes.operator import Controller, OperatorConfig, api_client
from tests.helpers.manifests import INVALID, reference_document, validation_problems
from tests.helpers.operator_bed import apply, install_crd

pytestmark = pytest.mark.cluster

# Checks the CRD cannot express; the operator refuses these at its first step (reason InvalidSpec).
OPERATOR_ONLY = {
    "categorical-without-values",  # CEL cannot see the untyped values list
    "gate-without-bound",  # the trainer's gate model: min or max
    "value-the-trainer-rejects",  # the trainer's bounds of each tunable field
    "categorical-value-the-trainer-rejects",
    "unknown-dataset",  # the builtin data catalogue
    "split-leaves-nothing",  # the trainer's split model
    "command-names-an-unknown-parameter",  # finding every {{params.x}} needs a regex search
}
# Cases where the API server (or kubectl, for a group/version/kind it does not serve) names the field
# in other words than its path: what its message says instead.
SERVER_NAMES = {
    "wrong-api-version": "conveyor.dev/v1",
    "wrong-kind": 'kind "TrainJob"',
    "no-spec": "spec: Required value",
    "unknown-top-level-field": 'unknown field "spec.tuner"',
    "typo-in-section": 'unknown field "spec.training.epoch"',
    # A CEL rule on the root may not point into metadata: the server reports the rule's own message.
    "long-name": rules.ROOT_RULES[0].message,
}


@pytest.fixture(scope="module")
def crd(kubectl: str, kubeconfig: Path) -> None:
    install_crd(kubectl, kubeconfig)


def test_every_case_has_a_place() -> None:
    assert {case[0] for case in INVALID} >= OPERATOR_ONLY


@pytest.mark.parametrize(("case", "mutate", "path"), [c[:3] for c in INVALID], ids=[c[0] for c in INVALID])
def test_the_cluster_rejects_what_validate_rejects(
    crd: None, case: str, mutate: Any, path: str, kubectl: str, kubeconfig: Path, namespace: str, k8s_api: Any
) -> None:
    document = reference_document()
    mutate(document)
    document.setdefault("metadata", {})["namespace"] = namespace
    problems = validation_problems(document)
    assert path in problems, problems  # `conveyor validate` rejects it, naming the field

    created = apply(kubectl, kubeconfig, document, verb="create")
    if case not in OPERATOR_ONLY:
        assert created.returncode != 0, f"the API server accepted {case}"
        assert SERVER_NAMES.get(case, path) in created.stderr, created.stderr
        return

    # Accepted by the API server: the operator's first step fails it, before any pod, with the same words.
    assert created.returncode == 0, created.stderr
    name = document["metadata"]["name"]
    operator = Controller(Api(api_client(str(kubeconfig))), OperatorConfig(namespaces=(namespace,)))
    assert operator.step((namespace, name)) is None
    custom: Any = client.CustomObjectsApi(k8s_api)
    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec"), status
    assert f"{path}: {problems[path]}" in status["message"], (status["message"], problems)
    batch: Any = client.BatchV1Api(k8s_api)
    assert batch.list_namespaced_job(namespace).items == []
    assert client.CoreV1Api(k8s_api).list_namespaced_pod(namespace).items == []


def test_the_operator_refuses_a_local_code_path(
    crd: None, kubectl: str, kubeconfig: Path, namespace: str, k8s_api: Any
) -> None:
    """code.path is valid for `conveyor run`, and the API server accepts it, but the operator cannot read
    a directory on the user's machine: its first step fails the pipeline (InvalidSpec) before any pod,
    saying to use `conveyor apply -f` or code.configMap."""
    document = reference_document()
    document["spec"]["code"] = {"path": "src"}
    document["metadata"].update({"namespace": namespace, "name": "local-code"})
    assert validation_problems(document) == {}
    created = apply(kubectl, kubeconfig, document, verb="create")
    assert created.returncode == 0, created.stderr
    operator = Controller(Api(api_client(str(kubeconfig))), OperatorConfig(namespaces=(namespace,)))
    assert operator.step((namespace, "local-code")) is None
    custom: Any = client.CustomObjectsApi(k8s_api)
    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "local-code")["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec"), status
    field, message = rules.CODE_PATH_ON_CLUSTER
    assert f"{field}: {message}" in status["message"]
    assert client.BatchV1Api(k8s_api).list_namespaced_job(namespace).items == []

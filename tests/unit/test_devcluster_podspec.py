"""The local kubelet's pure helpers: environment with the downward API, $(VAR) expansion, DNS names."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.devcluster import podspec

POD: dict[str, Any] = {
    "metadata": {
        "name": "train-0-abc",
        "namespace": "ml",
        "uid": "u-1",
        "labels": {"app": "train"},
        "annotations": {"batch.kubernetes.io/job-completion-index": "3"},
    },
    "spec": {"nodeName": "conveyor-local", "hostname": "train-0", "subdomain": "train"},
    "status": {"podIP": "127.100.0.5", "podIPs": [{"ip": "127.100.0.5"}]},
}


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1"}
    assert podspec.expand("$(A)-$(B)-$$(A)", env) == "1-$(B)-$(A)"


def test_container_env_resolves_downward_api_and_refs() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {
                "name": "INDEX",
                "valueFrom": {
                    "fieldRef": {
                        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                    }
                },
            },
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "URL", "value": "http://$(IP):$(CFG_PORT)"},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "p"}}},
            {"name": "GPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.nvidia.com/gpu"}}},
        ],
        "resources": {"limits": {"nvidia.com/gpu": "2"}},
    }
    data = {("configMapRef", "cfg"): {"PORT": "29500"}, ("secretRef", "s"): {"p": "hunter2"}}
    env = podspec.container_env(
        POD, container, {"PATH": "/bin"}, lambda kind, ns, name: data.get((kind, name))
    )
    assert env == {
        "PATH": "/bin",
        "CFG_PORT": "29500",
        "INDEX": "3",
        "IP": "127.100.0.5",
        "NS": "ml",
        "URL": "http://127.100.0.5:29500",
        "PASS": "hunter2",
        "GPUS": "2",
    }


def test_missing_required_ref_is_an_error() -> None:
    container = {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]}
    with pytest.raises(ValueError, match="no key"):
        podspec.container_env(POD, container, {}, lambda *_: None)


def test_dns_names_cover_headless_service_forms() -> None:
    assert podspec.dns_names(POD) == [
        "train-0.train.ml.svc.cluster.local",
        "train-0.train.ml.svc",
        "train-0.train.ml",
        "train-0.train",
        "train-0",
    ]
    assert podspec.dns_names({"metadata": {"name": "p", "namespace": "n"}, "spec": {}}) == ["p"]

"""Small read helpers for the CLI against the current kubeconfig (`conveyor status`, `conveyor logs`).

Kept apart from the operator: a person's kubeconfig and namespace defaults, errors worded for a
terminal, and nothing that writes."""

from __future__ import annotations

from typing import Any

from conveyor.operator.api import GROUP, PLURAL, VERSION
from conveyor.operator.kubernetes import builders
from conveyor.operator.kubernetes.executor import PATHS, Api, ApiError


class ClusterError(Exception):
    pass


def connect(kubeconfig: str | None, namespace: str | None) -> tuple[Api, str]:
    from kubernetes import config

    try:
        _contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        client = config.new_client_from_config(config_file=kubeconfig)
    except Exception as error:  # the client raises several kinds for a missing or broken kubeconfig
        raise ClusterError(f"no usable kubeconfig ({error})") from None
    default = (active or {}).get("context", {}).get("namespace") or "default"
    return Api(client), namespace or default


def read_pipeline(name: str, namespace: str | None, kubeconfig: str | None) -> dict[str, Any]:
    api, ns = connect(kubeconfig, namespace)
    try:
        body: dict[str, Any] = api.get(f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/{name}")
    except ApiError as error:
        if error.status == 404:
            raise ClusterError(
                f"no TrainingPipeline {name!r} in namespace {ns} (and no run directory)"
            ) from None
        raise ClusterError(str(error)) from None
    return body


def pods_of(
    name: str, namespace: str | None, kubeconfig: str | None, workload: str | None
) -> tuple[Api, str, list[dict[str, Any]]]:
    api, ns = connect(kubeconfig, namespace)
    selector = f"{builders.LABEL_PIPELINE}={builders.label_value(name)}"
    if workload:
        selector += f",{builders.LABEL_WORKLOAD}={builders.label_value(workload)}"
    try:
        pods = api.list("Pod", ns, selector)
    except ApiError as error:
        raise ClusterError(str(error)) from None
    return api, ns, pods


def pod_log(api: Api, namespace: str, pod: str, container: str, tail: int | None) -> str:
    path = PATHS["Pod"].format(ns=namespace) + f"/{pod}/log"
    query = {"container": container, **({"tailLines": str(tail)} if tail else {})}
    headers = {"Accept": "*/*"}
    serialized = api.client.param_serialize(
        method="GET",
        resource_path=path,
        query_params=list(query.items()),
        header_params=headers,
        auth_settings=["BearerToken"],
    )
    response = api.client.call_api(*serialized, _request_timeout=60)
    data = response.read()
    text = data.decode(errors="replace") if isinstance(data, bytes) else str(data or "")
    if response.status >= 400:
        raise ClusterError(f"logs of {pod}: {response.status} {text[:200]}")
    return text

"""Chaos in CI, the small form of `benchmarks/chaos.py` (same faults, same invariants, from
`tests.helpers.chaos`): 4 pipelines on KWOK under two leader-electing operator replicas while the leader
is SIGKILLed twice, a pipeline pod is evicted, the busiest GPU node is deleted and the API server is
restarted in place. Every pipeline must end as its spec implies (one of the four has a gate above the
simulated accuracy: Failed/GateFailed), with exactly its trials and results, each Job created once, and
nothing of it left once deleted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from conveyor.devcluster import kwok
from tests.helpers import chaos
from tests.helpers.operator_bed import sa_kubeconfig

pytestmark = pytest.mark.cluster


@pytest.fixture
def nodes_restored(k8s_api: Any) -> Iterator[None]:
    """The session's KWOK nodes as they were: a node this test removed joins again afterwards."""
    core: Any = client.CoreV1Api(k8s_api)
    selector = f"{kwok.NODE_LABEL}={kwok.NODE_LABEL_VALUE}"
    before = {n.metadata.name for n in core.list_node(label_selector=selector).items}
    yield
    after = {n.metadata.name for n in chaos.retrying(lambda: core.list_node(label_selector=selector).items)}
    for name in sorted(before - after):
        chaos.add_node(k8s_api, name)


def test_pipelines_end_as_they_should_under_chaos(
    devcluster: Any,
    release: str,
    restricted: str,
    kubeconfig: Path,
    kubectl: str,
    tmp_path: Path,
    wait_for: Callable[..., Any],
    nodes_restored: None,
) -> None:
    plan = chaos.Plan(
        pipelines=4,
        trials=3,
        parallelism=2,
        seconds=8.0,  # long enough for every fault to land while pods run
        gate_failing_every=4,
        leader_kills=2,
        pod_evictions=1,
        node_removals=1,
        apiserver_restarts=1,
        gap=(1.0, 4.0),
        timeout=240.0,
    )
    token = sa_kubeconfig(kubeconfig, kubectl, release, tmp_path / "sa.kubeconfig")
    report = chaos.run(devcluster, restricted, release, token, tmp_path, plan, wait_for, print)
    print(report.table())

    assert report.fault_counts() == {
        "leader_kill": 2,
        "pod_eviction": 1,
        "node_removal": 1,
        "apiserver_restart": 1,
    }
    assert all(f["detail"] is not None for f in report.faults), report.faults  # each fault hit something
    assert report.violations == [], "\n".join(report.violations)
    phases = {name: (o["phase"], o["reason"]) for name, o in report.outcomes.items()}
    assert phases == {
        "chaos-000": ("Succeeded", "Succeeded"),
        "chaos-001": ("Succeeded", "Succeeded"),
        "chaos-002": ("Succeeded", "Succeeded"),
        "chaos-003": ("Failed", "GateFailed"),
    }
    assert report.replicas_started >= 4  # the two first, one per kill


def test_a_replica_with_another_pod_template_keeps_the_attempts_job(
    release: str, restricted: str, k8s_api: Any, wait_for: Callable[..., Any]
) -> None:
    """What the chaos run found: a new leader (another replica, or another operator version) whose pod
    template differs, e.g. by its progress URL, starting an attempt whose Job the old leader created.
    A Job's template is immutable, so the apply is refused (422); the existing Job is this attempt's
    and is kept, where the refusal used to fail every reconcile of the pipeline for good."""
    from conveyor.operator.api.resource import parse
    from conveyor.operator.kubernetes import builders
    from conveyor.operator.kubernetes.executor import Api, KubernetesExecutor
    from conveyor.operator.workloads import Workload

    custom: Any = client.CustomObjectsApi(k8s_api)
    body = chaos.manifest(chaos.Plan(), 0, restricted)
    created = custom.create_namespaced_custom_object(
        chaos.GROUP, chaos.VERSION, restricted, chaos.PLURAL, body
    )
    owner = builders.Owner(body["metadata"]["name"], restricted, created["metadata"]["uid"], parse(body).spec)
    prepare = Workload("prepare", "prepare", "prepare", "data", config={"a": 1})
    api = Api(k8s_api)
    for url in ("http://127.0.0.1:1001", "http://127.0.0.1:1002"):  # the old leader's, the new one's
        settings = builders.Settings(progress_url=url)
        KubernetesExecutor(api, settings).for_pipeline(owner, created).start(prepare)
    batch: Any = client.BatchV1Api(k8s_api)
    job = batch.read_namespaced_job("chaos-000-prepare-0", restricted)
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    assert "http://127.0.0.1:1001" in env.values()  # the first replica's Job, unchanged
    assert "http://127.0.0.1:1002" not in env.values()

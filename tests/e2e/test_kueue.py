"""Gang admission with Kueue on the test bed: real Kueue (built from the pinned module, its webhooks
registered), the operator with the chart's RBAC, pipelines on the KWOK GPU nodes.

A pipeline with `spec.scheduling.queueName` gets suspended Jobs labelled with the queue; Kueue admits a
Job's whole pod set against the ClusterQueue's GPU quota or none of it. So a distributed job never
holds some GPUs while waiting for the rest, and two pipelines that each fit, but not both, run one
after the other instead of deadlocking on half their workers each.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.devcluster import kueue
from conveyor.devcluster.cluster import Cluster as DevCluster
from tests.helpers.operator_bed import (
    TIMEOUT,
    Cluster,
    OperatorProcess,
    apply,
    eval_result,
    pipeline_manifest,
    trial_result,
)

pytestmark = pytest.mark.cluster

WORKERS = 2  # GPU workers of each pipeline's training job, one GPU each


@pytest.fixture(scope="module")
def kueue_running(devcluster: DevCluster) -> Iterator[None]:
    """Kueue on the session's cluster for this module (the other tests run without its webhooks)."""
    if not os.access(devcluster.config.bin_dir / "kueue", os.X_OK):
        reason = f"kueue not built in {devcluster.config.bin_dir}; run scripts/build-control-plane"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    started = not devcluster.kueue_running()
    devcluster.start_kueue()
    yield
    if started:
        devcluster.stop_kueue()


class Queue:
    """A ClusterQueue of this test (GPU quota settable) and LocalQueue `gpus` in the test's namespace."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.custom: Any = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.name = f"cq-{uuid.uuid4().hex[:8]}"
        self.local = "gpus"

    def create(self, gpus: int) -> None:
        self.custom.create_cluster_custom_object(
            kueue.GROUP, kueue.VERSION, "clusterqueues", kueue.cluster_queue(self.name, gpus)
        )
        self.custom.create_namespaced_custom_object(
            kueue.GROUP,
            kueue.VERSION,
            self.namespace,
            "localqueues",
            kueue.local_queue(self.local, self.namespace, self.name),
        )

    def set_gpus(self, gpus: int) -> None:
        spec = kueue.cluster_queue(self.name, gpus)["spec"]
        self.custom.patch_cluster_custom_object(
            kueue.GROUP, kueue.VERSION, "clusterqueues", self.name, {"spec": spec}
        )

    def delete(self) -> None:
        self.custom.delete_cluster_custom_object(kueue.GROUP, kueue.VERSION, "clusterqueues", self.name)

    def workload(self, job: str) -> dict[str, Any] | None:
        """Kueue's Workload for `job` (owned by it), once Kueue made one."""
        items = self.custom.list_namespaced_custom_object(
            kueue.GROUP, kueue.VERSION, self.namespace, "workloads"
        )["items"]
        return next(
            (w for w in items if any(o["name"] == job for o in w["metadata"].get("ownerReferences", []))),
            None,
        )


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def waiting_for_quota(queue: Queue, job: str) -> dict[str, Any] | None:
    """`job`'s Workload once Kueue tried it and found too little GPU quota for its whole pod set
    ("insufficient quota" beyond the nominal quota, "insufficient unused quota" while others use it)."""
    workload = queue.workload(job)
    reserved = condition(workload, "QuotaReserved")
    message = reserved.get("message", "")
    if reserved.get("status") == "False" and "insufficient" in message and "nvidia.com/gpu" in message:
        return workload
    return None


def admitted(queue: Queue, kube: Cluster, job: str) -> dict[str, Any] | None:
    """`job`'s Workload once Kueue admitted it and unsuspended the Job."""
    workload = queue.workload(job)
    if condition(workload, "Admitted").get("status") == "True" and not kube.job(job)["spec"].get("suspend"):
        return workload
    return None


@pytest.fixture
def queue(kueue_running: None, restricted: str, k8s_api: Any) -> Iterator[Queue]:
    q = Queue(k8s_api, restricted)
    yield q
    q.delete()


def gpu_pipeline(name: str, namespace: str, local_queue: str) -> dict[str, Any]:
    """Prepare (no GPU) -> one training job of WORKERS x 1 GPU -> evaluate; queued in `local_queue`."""
    manifest = pipeline_manifest(name, namespace, tuning=None, ensemble=None, serving=None)
    manifest["spec"]["resources"].update({"workers": WORKERS, "gpu": 1, "processesPerWorker": 1})
    manifest["spec"]["scheduling"]["queueName"] = local_queue
    return manifest


def prepare(kube: Cluster, wait_for: Callable[..., Any], name: str) -> str:
    """Finish `name`'s prepare Job (admitted at once: it asks for no GPU); its training Job's name."""
    job = wait_for(lambda: kube.job(f"{name}-prepare-0"), TIMEOUT, f"Job {name}-prepare-0")
    assert job["metadata"]["labels"][kueue.QUEUE_LABEL] == "gpus"
    kube.finish(f"{name}-prepare-0", 1, {"status": "succeeded"})
    train = f"{name}-train-0"
    wait_for(lambda: kube.job(train), TIMEOUT, f"Job {train}")
    return train


def finish_training_and_evaluation(kube: Cluster, wait_for: Callable[..., Any], name: str) -> None:
    kube.finish(f"{name}-train-0", WORKERS, trial_result(0.97))
    wait_for(lambda: kube.job(f"{name}-evaluate-model-0"), TIMEOUT, f"Job {name}-evaluate-model-0")
    kube.finish(f"{name}-evaluate-model-0", 1, eval_result(0.97))


def test_distributed_job_is_admitted_whole_or_not_at_all(
    operator: OperatorProcess,
    restricted: str,
    queue: Queue,
    k8s_api: Any,
    kubectl: str,
    kubeconfig: Path,
    wait_for: Callable[..., Any],
) -> None:
    ns = restricted
    kube = Cluster(k8s_api, ns, wait_for)
    queue.create(gpus=WORKERS - 1)
    created = apply(kubectl, kubeconfig, gpu_pipeline("gang", ns, queue.local))
    assert created.returncode == 0, created.stderr
    train = prepare(kube, wait_for, "gang")

    # Quota for one of its two GPU workers: Kueue keeps the whole Job suspended, no pod exists.
    workload = wait_for(lambda: waiting_for_quota(queue, train), TIMEOUT, f"{train} to wait for quota")
    assert "insufficient quota" in condition(workload, "QuotaReserved")["message"]
    assert kube.job(train)["spec"]["suspend"] is True
    assert kube.pods(train) == []
    status = kube.status("gang")
    assert status["phase"] == "Training"
    assert [w["state"] for w in status["workloads"] if w["name"] == "train"] == ["Pending"]

    # Quota for both: admitted as one pod set of WORKERS, and every worker starts, on the GPU nodes.
    queue.set_gpus(WORKERS)
    workload = wait_for(lambda: admitted(queue, kube, train), TIMEOUT, f"{train} admitted")
    (assignment,) = workload["status"]["admission"]["podSetAssignments"]
    assert assignment["count"] == WORKERS
    assert assignment["resourceUsage"]["nvidia.com/gpu"] == str(WORKERS)
    pods = kube.running_pods(train, WORKERS)
    for pod in pods:
        node = kube.core.read_node(pod["spec"]["nodeName"])
        assert node.metadata.labels.get("nvidia.com/gpu.present") == "true"

    finish_training_and_evaluation(kube, wait_for, "gang")
    status = kube.wait_status("gang", lambda s: s.get("phase") in ("Succeeded", "Failed"), "gang to finish")
    assert status["phase"] == "Succeeded", status


def test_two_pipelines_competing_for_too_few_gpus_both_finish(
    operator: OperatorProcess,
    restricted: str,
    queue: Queue,
    k8s_api: Any,
    kubectl: str,
    kubeconfig: Path,
    wait_for: Callable[..., Any],
) -> None:
    """Each training job fits the quota alone (WORKERS GPUs of WORKERS + 1), both together do not:
    one runs whole while the other waits whole, then the other runs; no job ever holds part of it."""
    ns = restricted
    kube = Cluster(k8s_api, ns, wait_for)
    queue.create(gpus=WORKERS + 1)
    names = ["left", "right"]
    for name in names:
        created = apply(kubectl, kubeconfig, gpu_pipeline(name, ns, queue.local))
        assert created.returncode == 0, created.stderr
    trains = {name: prepare(kube, wait_for, name) for name in names}

    def first_admitted() -> str | None:
        running = [n for n in names if admitted(queue, kube, trains[n])]
        waiting = [n for n in names if waiting_for_quota(queue, trains[n])]
        return running[0] if len(running) == 1 and len(waiting) == 1 else None

    first = wait_for(first_admitted, TIMEOUT, "one training job admitted, the other waiting for quota")
    (second,) = (n for n in names if n != first)
    kube.running_pods(trains[first], WORKERS)
    assert kube.job(trains[second])["spec"]["suspend"] is True
    assert kube.pods(trains[second]) == []

    finish_training_and_evaluation(kube, wait_for, first)
    wait_for(lambda: admitted(queue, kube, trains[second]), TIMEOUT, f"{trains[second]} admitted")
    finish_training_and_evaluation(kube, wait_for, second)
    for name in names:
        status = kube.wait_status(name, lambda s: s.get("phase") in ("Succeeded", "Failed"), f"{name} done")
        assert status["phase"] == "Succeeded", status


def test_kueue_webhook_suspends_a_queued_job_at_create(queue: Queue, restricted: str, k8s_api: Any) -> None:
    """The webhooks are live, through the Service's loopback ClusterIP and Kueue's own certificates: a
    Job created with a queue label and no `suspend` comes back suspended (Kueue's mutating webhook)."""
    from kubernetes import client

    batch: Any = client.BatchV1Api(k8s_api)
    queue.create(gpus=1)
    job = batch.create_namespaced_job(
        restricted,
        {
            "metadata": {"name": "queued", "labels": {kueue.QUEUE_LABEL: queue.local}},
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "busybox", "command": ["true"]}],
                    }
                }
            },
        },
    )
    assert job.spec.suspend is True
    plain = batch.create_namespaced_job(
        restricted,
        {
            "metadata": {"name": "plain"},
            "spec": {
                "suspend": False,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "busybox", "command": ["true"]}],
                    }
                },
            },
        },
    )
    assert plain.spec.suspend is False  # a Job without a queue label is not Kueue's


def test_dev_cluster_queues_hold_every_gpu(kueue_running: None, k8s_api: Any) -> None:
    """`start_kueue` leaves ClusterQueue `conveyor` (every GPU of the nodes as quota) with the
    LocalQueue `default/conveyor` pointing at it, for `spec.scheduling.queueName: conveyor`."""
    from kubernetes import client

    custom: Any = client.CustomObjectsApi(k8s_api)
    core: Any = client.CoreV1Api(k8s_api)
    gpus = sum(int((n.status.allocatable or {}).get("nvidia.com/gpu", "0")) for n in core.list_node().items)
    queue = custom.get_cluster_custom_object(kueue.GROUP, kueue.VERSION, "clusterqueues", kueue.CLUSTER_QUEUE)
    (flavor,) = queue["spec"]["resourceGroups"][0]["flavors"]
    quota = {r["name"]: r["nominalQuota"] for r in flavor["resources"]}
    assert flavor["name"] == kueue.FLAVOR
    assert int(quota["nvidia.com/gpu"]) == gpus > 0
    local = custom.get_namespaced_custom_object(
        kueue.GROUP, kueue.VERSION, "default", "localqueues", kueue.LOCAL_QUEUE
    )
    assert local["spec"]["clusterQueue"] == kueue.CLUSTER_QUEUE

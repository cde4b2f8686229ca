"""The operator's own pod specs, really run: a small pipeline on the test bed's local node, whose pods
execute as local processes (2 trainer pods per training job, each the trainer as its one process,
rendezvous through the headless Service's DNS name), with results flowing back through termination
messages and the served model answering an Open Inference Protocol request. No placement and no port
in the manifest: pods asking for no GPU land on the local node, each in its own network namespace
(every rank 0 binds 29500, the server binds the default port)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from conveyor.devcluster.cluster import LOCAL_NODE
from tests.helpers.operator_bed import (
    REFERENCE,
    Cluster,
    OperatorProcess,
    apply,
    running_operator,
    served_model,
    sh,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def local_operator(
    release: str, namespace: str, kubeconfig: Path, kubectl: str, k8s_api: Any, tmp_path: Path
) -> Iterator[OperatorProcess]:
    from kubernetes import client

    core: Any = client.CoreV1Api(k8s_api)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "conveyor-artifacts"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )

    with running_operator(release, namespace, kubeconfig, kubectl, tmp_path) as process:
        yield process


def test_small_pipeline_really_runs_on_the_local_node(
    local_operator: OperatorProcess,
    namespace: str,
    k8s_api: Any,
    kubectl: str,
    kubeconfig: Path,
    wait_for: Callable[..., Any],
) -> None:
    kube = Cluster(k8s_api, namespace, wait_for)
    manifest: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    manifest["metadata"] = {"name": "tiny", "namespace": namespace}
    spec = manifest["spec"]
    spec["data"]["source"] = "builtin://iris"
    spec["data"].pop("augmentation", None)
    spec["model"] = {"architecture": "mlp", "hiddenSize": 32}
    spec["training"].update({"epochs": 3, "batchSize": 16})
    spec["resources"] = {"workers": 2, "processesPerWorker": 1, "gpu": 0, "cpu": "1", "memory": "1Gi"}
    spec["tuning"].update({"trials": 2, "parallelism": 1, "pruner": "none", "algorithm": "random"})
    spec["evaluation"]["gate"] = {"metric": "accuracy", "min": 0.3}
    spec["ensemble"]["topK"] = 2
    spec["serving"] = {"replicas": 1, "quantization": "none"}
    port = 8080  # the default
    assert apply(kubectl, kubeconfig, manifest).returncode == 0

    status = kube.serving("tiny", 420)
    # Both trials and the final training really trained, and their results came back through the
    # termination messages (the pods have no API access). Their live epochs reached the operator:
    # pushed over HTTPS, verified against the operator's CA projected into each pod from its template.
    trials = status["trials"]
    assert [t["state"] for t in trials] == ["Succeeded", "Succeeded"], trials
    assert all(t["values"] for t in trials), trials
    assert all(0.0 <= t["value"] <= 1.0 for t in trials), trials
    assert all(status["stages"][s]["state"] == "Succeeded" for s in ("prepare", "tune", "train", "evaluate"))
    assert status["evaluation"]["ensemble"]["accuracy"] >= 0.3, status["evaluation"]

    # Each training Job ran as 2 worker pods on the local node, each the trainer itself (rank = the
    # completion index), rank 0 found by its headless-Service DNS name; both finished the same DDP run.
    jobs = kube.batch.list_namespaced_job(namespace).items
    training = [j for j in jobs if j.spec.completion_mode == "Indexed"]
    assert len(training) == 3, [j.metadata.name for j in jobs]  # 2 trials + the final training
    for job in training:
        name = job.metadata.name
        assert job.status.succeeded == 2, (name, job.status)
        pods = kube.pods(name)
        assert len(pods) == 2 and {p["spec"]["nodeName"] for p in pods} == {LOCAL_NODE}, name
        assert len({p["status"]["podIP"] for p in pods}) == 2
        for pod in pods:
            (container,) = pod["spec"]["containers"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["PET_NNODES"] == "2" and env["WORLD_SIZE"] == "2", env
            assert env["PET_MASTER_ADDR"] == env["MASTER_ADDR"] == f"{name}-0.{name}", env
            argv = container["command"] + container.get("args", [])
            assert argv[1:4] == ["-m", "conveyor.trainer", "train"], argv  # the pod's one process
            assert "torch.distributed.run" not in argv and env["LOCAL_RANK"] == "0", argv
        pods.sort(key=lambda p: p["spec"]["hostname"])
        assert [p["spec"]["hostname"] for p in pods] == [f"{name}-0", f"{name}-1"]
        ends = [p["status"]["containerStatuses"][0]["state"]["terminated"] for p in pods]
        assert [e["exitCode"] for e in ends] == [0, 0], ends
        result = json.loads(ends[0]["message"])  # rank 0 reports the result
        assert result["status"] == "succeeded" and result["epochsRun"] == 3, result
        trial = next((t for t in trials if name.startswith(f"tiny-{t['name']}-")), None)
        if trial is not None:
            assert trial["value"] == pytest.approx(result["objective"]["value"]), (trial, result)

    # The served model answers an Open Inference Protocol v2 request at the pod's own address (the
    # local node reports a started container Ready without probes,
    # so wait until the server itself says it is ready).
    oip = served_model(kube, "tiny", port)
    inputs = httpclient.InferInput("input", [2, 4], "FP32")
    inputs.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    answer = oip.infer("tiny", [inputs])
    probabilities = answer.as_numpy("probabilities")
    assert probabilities is not None and probabilities.shape == (2, 3), answer.get_response()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert status["serving"]["ready"] and status["serving"].get("url"), status["serving"]
    sh(kubectl, "--kubeconfig", str(kubeconfig), "-n", namespace, "delete", "tp", "tiny", "--wait=true")

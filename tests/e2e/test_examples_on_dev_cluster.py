"""First apply just works: an example applied unmodified on the dev cluster runs for real to Serving.

No nodeSelector, no toleration, no claim created beforehand, the default serving port: the pods ask for
no GPU, so they land on the local node (the GPU nodes are tainted), each in its own network namespace
(two trials at once, both torchrun rank 0 on port 29500), on the claim the operator provisions for a
pipeline without `spec.storage`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from conveyor.devcluster.cluster import LOCAL_NODE
from tests.helpers.manifests import EXAMPLES
from tests.helpers.operator_bed import Cluster, running_operator, served_model, sh

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_iris_example_applied_unmodified_reaches_serving(
    release: str,
    namespace: str,
    k8s_api: Any,
    kubectl: str,
    kubeconfig: Path,
    tmp_path: Path,
    wait_for: Callable[..., Any],
) -> None:
    example = EXAMPLES / "iris.yaml"
    manifest = yaml.safe_load(example.read_text())
    assert "storage" not in manifest["spec"] and "scheduling" not in manifest["spec"]
    assert manifest["spec"]["tuning"]["parallelism"] == 2
    kube = Cluster(k8s_api, namespace, wait_for)
    with running_operator(release, namespace, kubeconfig, kubectl, tmp_path):
        sh(kubectl, "--kubeconfig", str(kubeconfig), "-n", namespace, "apply", "-f", str(example))

        status = kube.serving("iris", 600)

    trials = status["trials"]
    assert len(trials) == 6 and all(t["state"] in ("Succeeded", "Pruned") for t in trials), trials
    assert status["gate"]["passed"] is True, status["gate"]

    # Every pod ran on the local node; the first two trials ran at once, each at its own address (an
    # address is reused once its pod is gone, as with a CNI's IPAM).
    pods = kube.core.list_namespaced_pod(namespace).items
    assert pods and {p.spec.node_name for p in pods} == {LOCAL_NODE}
    first = [
        p.status.pod_ip for p in pods if p.metadata.name.startswith(("iris-trial-0000-", "iris-trial-0001-"))
    ]
    assert len(first) == 2 and len(set(first)) == 2, first

    # The artifacts claim the operator provisioned: shared by every stage, owned by the pipeline, said
    # in an Event.
    claim = kube.core.read_namespaced_persistent_volume_claim("iris-artifacts", namespace)
    assert [r.kind for r in claim.metadata.owner_references] == ["TrainingPipeline"]
    assert claim.spec.access_modes == ["ReadWriteMany"]  # two trials at once
    assert status["artifacts"]["root"] == "pvc://iris-artifacts"
    events = kube.core.list_namespaced_event(namespace, field_selector="involvedObject.name=iris").items
    provisioned = [e for e in events if e.reason == "StorageProvisioned"]
    assert len(provisioned) == 1 and "iris-artifacts" in provisioned[0].message, [e.reason for e in events]
    volumes = {v.name: v for v in pods[0].spec.volumes}
    assert volumes["artifacts"].persistent_volume_claim.claim_name == "iris-artifacts"

    # The served model answers on the default port, at the serving pod's own address.
    oip = served_model(kube, "iris", 8080)
    inputs = httpclient.InferInput("input", [1, 4], "FP32")
    inputs.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
    probabilities = oip.infer("iris", [inputs]).as_numpy("probabilities")
    assert probabilities is not None and probabilities.shape == (1, 3)
    sh(kubectl, "--kubeconfig", str(kubeconfig), "-n", namespace, "delete", "tp", "iris", "--wait=true")

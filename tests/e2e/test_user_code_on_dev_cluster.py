"""A user's own program on the dev cluster: `conveyor apply` ships its code, and every stage runs on it.

The project is an unmodified argparse training script (examples/argparse-script/train.py) tuned through
its command line (`{{params.optimizer.learningRate}}`), applied with `conveyor apply`: the directory
becomes the ConfigMap `<name>-code`, mounted read-only in every pod (PodSecurity `restricted`, read-only
root filesystem) and unpacked by the trainer. Each trial is torchrun across 2 pods on the local node
(`resources.workers: 2`, the `command` stage starting torchrun from the `PET_*` environment). The grid
puts a learning rate that cannot learn last (tuning.seed 3 orders it so), so the median pruner prunes
it against the two finished trials; it is asked to stop through the progress endpoint's reply, and
`conveyor.sdk.report`/`should_stop` end it on its own, long before the grace period. Then the final
training, evaluation, the ensemble of the two best exported models, and serving answer an OIP v2 request.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from conveyor.cli import main
from conveyor.devcluster.cluster import LOCAL_NODE
from conveyor.operator.kubernetes.builders import CODE_MOUNT, LABEL_WORKLOAD
from tests.helpers.manifests import REPO
from tests.helpers.operator_bed import Cluster, running_operator, served_model

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SCRIPT = REPO / "examples" / "argparse-script" / "train.py"
GRACE_SECONDS = 600  # the pruned trial must stop through report() well before it would be killed
BAD_RATE = 1e-07
RATES = [0.05, 0.03, BAD_RATE]  # tuning.seed 3 runs them as 0.03, 0.05, BAD_RATE
LEARNING_RATE = "{{params.optimizer.learningRate}}"


def user_project(root: Path, name: str = "byo") -> Path:
    """The user's project: their script in `project/`, and the manifest next to it."""
    project = root / "project"
    project.mkdir(parents=True)
    shutil.copy(SCRIPT, project / "train.py")
    manifest = {
        "apiVersion": "conveyor.dev/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": name},
        "spec": {
            "code": {"path": "."},
            "task": {"type": "classification", "objective": {"metric": "accuracy", "goal": "maximize"}},
            "data": {
                "source": "builtin://breast-cancer",
                "split": {"validation": 0.2, "test": 0.2, "seed": 7, "stratify": True},
            },
            "training": {
                "command": ["python", "train.py", "--lr", LEARNING_RATE, "--epochs", "20"],
                "maxSteps": 20,
            },
            "resources": {"workers": 2, "processesPerWorker": 1, "cpu": "1", "memory": "1Gi"},
            "tuning": {
                "algorithm": "grid",
                "trials": 3,
                "parallelism": 1,
                "pruner": "median",
                "warmupSteps": 2,
                "seed": 3,
                "stopGracePeriodSeconds": GRACE_SECONDS,
                "parameters": [{"name": "optimizer.learningRate", "type": "categorical", "values": RATES}],
            },
            "evaluation": {"metrics": ["accuracy", "f1"], "gate": {"metric": "accuracy", "min": 0.8}},
            "ensemble": {"topK": 2},
            "serving": {"replicas": 1},
            "storage": {"uri": "pvc://conveyor-artifacts"},
        },
    }
    path = project / "pipeline.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_a_user_program_applied_with_its_code_runs_every_stage(
    release: str,
    restricted: str,
    k8s_api: Any,
    kubectl: str,
    kubeconfig: Path,
    tmp_path: Path,
    wait_for: Callable[..., Any],
) -> None:
    namespace = restricted
    manifest = user_project(tmp_path)
    kube = Cluster(k8s_api, namespace, wait_for)
    (tmp_path / "operator").mkdir()
    with running_operator(release, namespace, kubeconfig, kubectl, tmp_path / "operator"):
        applied = ["apply", "-f", str(manifest), "-n", namespace, "--kubeconfig", str(kubeconfig)]
        assert main(applied) == 0
        status = kube.serving("byo", 1200)

    # The code went as the pipeline's ConfigMap, not as a path the operator cannot read.
    pipeline = kube.pipeline("byo")
    assert pipeline["spec"]["code"] == {"configMap": "byo-code"}
    config_map = kube.core.read_namespaced_config_map("byo-code", namespace)
    assert [r.kind for r in config_map.metadata.owner_references] == ["TrainingPipeline"]

    # Two trials learned; the one that could not was pruned and stopped itself through report().
    trials = {t["params"]["optimizer.learningRate"]: t for t in status["trials"]}
    assert [trials[rate]["state"] for rate in (0.03, 0.05)] == ["Succeeded", "Succeeded"], status["trials"]
    pruned = trials[BAD_RATE]
    assert pruned["state"] == "Pruned" and pruned["reason"] == "Pruned", pruned
    assert "stopGracePeriodSeconds" not in pruned["message"], pruned["message"]  # not killed
    assert not pruned.get("stopping"), pruned
    pruned_pods = kube.core.list_namespaced_pod(
        namespace, label_selector=f"{LABEL_WORKLOAD}={pruned['name']}"
    ).items
    assert len(pruned_pods) == 2 and {p.status.phase for p in pruned_pods} == {"Succeeded"}, [
        (p.metadata.name, p.status.phase) for p in pruned_pods
    ]

    # Every trial was torchrun across 2 pods on the local node, each with the code mounted read-only.
    pods = kube.core.list_namespaced_pod(namespace).items
    assert {p.spec.node_name for p in pods} == {LOCAL_NODE}
    for trial in status["trials"]:
        ranks = [p for p in pods if p.metadata.labels.get(LABEL_WORKLOAD) == trial["name"]]
        assert len(ranks) == 2, (trial["name"], [p.metadata.name for p in ranks])
    for pod in pods:
        (container,) = pod.spec.containers
        mounts = {m.name: m for m in container.volume_mounts}
        assert mounts["code"].mount_path == CODE_MOUNT and mounts["code"].read_only, pod.metadata.name

    # Evaluation and the gate ran on the exported models; the ensemble of the two best is served.
    assert status["gate"]["passed"] is True, status["gate"]
    assert status["serving"]["model"].startswith("ensemble"), status["serving"]
    oip = served_model(kube, "byo", 8080)
    metadata = oip.get_model_metadata("byo")
    (model_input,) = metadata["inputs"]
    assert model_input["shape"][1:] == ["30"] or model_input["shape"][1:] == [30], model_input
    inputs = httpclient.InferInput(model_input["name"], [2, 30], "FP32")
    inputs.set_data_from_numpy(np.random.default_rng(0).normal(size=(2, 30)).astype(np.float32))
    assert "probabilities" in [output["name"] for output in metadata["outputs"]], metadata["outputs"]
    probabilities = oip.infer("byo", [inputs]).as_numpy("probabilities")
    assert probabilities is not None and probabilities.shape == (2, 2)  # benign / malignant
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)

"""The operator end to end on the real control plane with KWOK GPU nodes.

`helm install` the chart (operator replicas 0: the operator runs here as a process, but with exactly the
chart's RBAC: it authenticates with a token of the chart's ServiceAccount, so a missing permission fails
these tests), `kubectl apply` the reference pipeline with tuning reduced into a namespace that enforces
PodSecurity `restricted`, and play the trainer's part: pods stay Running (a long `sim-delay` passed
through `spec.scheduling.annotations`, no test hook in the product) until this test annotates them
with an exit code and the termination message a real trainer writes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.operator_bed import (
    TIMEOUT,
    Cluster,
    OperatorProcess,
    apply,
    env_of,
    eval_result,
    pipeline_manifest,
    post_epoch,
    sh,
    trial_result,
)

pytestmark = pytest.mark.cluster


def test_reference_pipeline_from_apply_to_serving(operator: OperatorProcess, kube: Cluster) -> None:
    ns = kube.namespace
    kube.apply(pipeline_manifest("digits", ns))

    # prepare: a plain Job, owned by the pipeline, restricted-compliant, no GPU
    kube.wait_status("digits", lambda s: s.get("phase") == "Preparing", "phase Preparing")
    job = kube.wait_job("digits-prepare-0")
    (ref,) = job["metadata"]["ownerReferences"]
    assert ref["kind"] == "TrainingPipeline" and ref["name"] == "digits" and ref["controller"] is True
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    container = pod_spec["containers"][0]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "conveyor-trainer:e2e"
    assert "nvidia.com/gpu" not in (container["resources"].get("limits") or {})
    assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "conveyor-artifacts"}} in pod_spec[
        "volumes"
    ]
    kube.finish("digits-prepare-0", 1, {"status": "succeeded"})

    # tune: Indexed Jobs of 2 GPU workers behind a headless Service, 2 at a time
    status = kube.wait_status("digits", lambda s: len(s.get("trials", [])) == 2, "2 running trials")
    assert status["phase"] == "Tuning"
    trial = kube.wait_job("digits-trial-0000-0")
    assert trial["spec"]["completionMode"] == "Indexed"
    assert trial["spec"]["completions"] == trial["spec"]["parallelism"] == 2
    assert trial["spec"]["podFailurePolicy"]["rules"][1]["onExitCodes"]["values"] == [2]
    container = trial["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "1" and env["WORLD_SIZE"] == "2"
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "digits-trial-0000-0-0.digits-trial-0000-0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    service = kube.core.read_namespaced_service("digits-trial-0000-0", ns)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True
    pods = kube.running_pods("digits-trial-0000-0", 2)
    for pod in pods:
        node = kube.core.read_node(pod["spec"]["nodeName"])
        assert node.metadata.labels.get("nvidia.com/gpu.present") == "true"
        assert env_of(pod["spec"]["containers"][0])["PET_NODE_RANK"]["fieldRef"]["fieldPath"].endswith(
            "job-completion-index']"
        )
    kube.finish("digits-trial-0000-0", 2, trial_result(0.93))
    kube.finish("digits-trial-0001-0", 2, trial_result(0.96))
    kube.wait_status("digits", lambda s: s.get("tuning", {}).get("succeeded") == 2, "2 trials succeeded")

    # the operator dies mid-sweep; a trial finishes while it is down; it comes back and goes on. If the
    # kill lands between the status write and a Job's creation, that trial is `lost` and runs again
    # as its next attempt: still exactly one Job per trial attempt, and exactly 4 trials.
    kube.wait_job("digits-trial-0002-0")
    operator.kill()
    kube.finish("digits-trial-0002-0", 2, trial_result(0.95))
    kube.wait_for(
        lambda: all(p["status"]["phase"] == "Succeeded" for p in kube.pods("digits-trial-0002-0")),
        TIMEOUT,
        "trial-0002 pods done while the operator is down",
    )
    operator.start()
    kube.wait_status("digits", lambda s: s.get("tuning", {}).get("succeeded") == 3, "trial-0002 absorbed")
    kube.finish(kube.current_job("digits", "trial-0003"), 2, trial_result(0.94))
    status = kube.wait_status("digits", lambda s: s.get("phase") == "Training", "phase Training")
    kube.assert_sweep_succeeded("digits", status, 4)
    assert status["bestTrial"]["name"] == "trial-0001"

    # train, evaluate, ensemble, gate, serve
    kube.finish("digits-train-0", 2, trial_result(0.97))
    kube.finish_once_created("digits-evaluate-model-0", 1, eval_result(0.97))
    kube.finish_once_created("digits-ensemble-0", 1, {"status": "succeeded"})
    kube.finish_once_created("digits-evaluate-ensemble-0", 1, eval_result(0.98))
    kube.kubectl("wait", "--for=condition=Ready", "tp/digits", "--timeout=120s")
    status = kube.status("digits")
    assert status["phase"] == "Serving"
    assert status["gate"]["passed"] is True and status["gate"]["candidate"] == "ensemble"
    assert status["serving"]["url"] == f"http://digits-serve.{ns}.svc:8080"
    deployment = kube.apps.read_namespaced_deployment("digits-serve", ns)
    assert deployment.status.ready_replicas == 1
    probe = deployment.spec.template.spec.containers[0].readiness_probe
    assert probe.http_get.path == "/v2/health/ready"

    printed = kube.kubectl("get", "tp", "digits").stdout
    assert "Serving" in printed and "accuracy=0.9600" in printed and "digits-serve" in printed
    events = kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=digits").items
    reasons = {e.reason for e in events}
    assert {"GatePassed", "ServingStarted"} <= reasons, reasons

    # deleting the pipeline removes every child (owner references, garbage collector)
    kube.kubectl("delete", "tp", "digits", "--wait=true")
    kube.wait_for(lambda: kube.children("digits") == [], TIMEOUT, "no children left")


def test_gate_blocks_serving(operator: OperatorProcess, kube: Cluster) -> None:
    ns = kube.namespace
    manifest = pipeline_manifest("weak", ns, tuning=None, ensemble=None)
    manifest["spec"]["resources"] = {"workers": 1, "cpu": "1", "memory": "2Gi"}
    kube.apply(manifest)
    kube.finish_once_created("weak-prepare-0", 1, {"status": "succeeded"})
    kube.finish_once_created("weak-train-0", 1, trial_result(0.81))
    kube.finish_once_created("weak-evaluate-model-0", 1, eval_result(0.80))
    status = kube.wait_status("weak", lambda s: s.get("phase") == "Failed", "phase Failed")
    assert status["reason"] == "GateFailed"
    assert status["gate"]["passed"] is False
    assert status["stages"]["serve"]["state"] == "Skipped"
    assert not [c for c in kube.children("weak") if c.startswith("deploy/")]
    events = kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=weak").items
    assert any(e.type == "Warning" or e.reason == "GateFailed" for e in events) or status["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tuning": {"trials": 4, "parallelism": 0, "parameters": []}}, "spec.tuning.parallelism"),
        ({"resources": {"workers": 0}}, "spec.resources.workers"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_manifests_rejected_by_the_api_server(
    release: str, namespace: str, kubectl: str, kubeconfig: Path, change: dict[str, Any], field: str
) -> None:
    manifest = pipeline_manifest("invalid", namespace)
    manifest["spec"].update(change)
    result = apply(kubectl, kubeconfig, manifest)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
    with contextlib.suppress(Exception):
        sh(kubectl, "--kubeconfig", str(kubeconfig), "-n", namespace, "delete", "tp", "invalid", check=False)


def test_progress_endpoint_drives_pruning(operator: OperatorProcess, kube: Cluster) -> None:
    """Epoch events pushed with a pod-bound projected token (audience conveyor.dev) reach status, and
    the median pruner stops a bad trial: its Job is deleted."""
    ns = kube.namespace
    manifest = pipeline_manifest("prune", ns, ensemble=None, serving=None)
    manifest["spec"]["tuning"].update({"trials": 3, "parallelism": 1, "pruner": "median"})
    manifest["spec"]["training"]["epochs"] = 5
    kube.apply(manifest)
    kube.finish(kube.current_job("prune", "prepare"), 1, {"status": "succeeded"})

    good = kube.current_job("prune", "trial-0000")
    token = kube.progress_token(good)
    # over HTTPS to the address pods use, verified against the CA the operator created, as pods do
    endpoint: dict[str, Any] = {"ca": operator.ca(), "host": operator.progress_host}
    first = {"event": "epoch", "epoch": 1}
    assert post_epoch(operator.progress_port, "not-a-token", first, **endpoint) == 403
    admin_token = kube.kubectl("create", "token", "default").stdout
    assert post_epoch(operator.progress_port, admin_token.strip(), first, **endpoint) == 403
    for epoch in range(1, 6):
        event = {"event": "epoch", "epoch": epoch, "epochs": 5, "metrics": {"accuracy": 0.9 + epoch / 100}}
        assert post_epoch(operator.progress_port, token, event, **endpoint) == 202
    status = kube.wait_status("prune", lambda s: s["trials"][0].get("epoch") == 5, "epochs of trial-0000")
    assert status["trials"][0]["values"] == [0.91, 0.92, 0.93, 0.94, 0.95]
    kube.finish(good, 2, trial_result(0.95))

    bad = kube.current_job("prune", "trial-0001")
    token = kube.progress_token(bad)
    for epoch in range(1, 4):
        event = {"event": "epoch", "epoch": epoch, "epochs": 5, "metrics": {"accuracy": 0.1}}
        post_epoch(operator.progress_port, token, event, **endpoint)
    status = kube.wait_status(
        "prune", lambda s: any(t["state"] == "Pruned" for t in s.get("trials", [])), "a pruned trial"
    )
    pruned = next(t for t in status["trials"] if t["state"] == "Pruned")
    assert pruned["name"] == "trial-0001"
    kube.wait_for(lambda: f"job/{bad}" not in kube.children("prune"), TIMEOUT, f"Job {bad} deleted")

    def reasons() -> set[str]:  # events are posted apart from status: poll, bounded, for this one
        return {
            e.reason
            for e in kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=prune").items
        }

    kube.wait_for(lambda: "TrialPruned" in reasons(), TIMEOUT, "a TrialPruned event")


def test_suspend_pauses_and_resumes_without_losing_trials(operator: OperatorProcess, kube: Cluster) -> None:
    """`spec.suspend: true` mid-sweep deletes the running trials' Jobs and keeps every trial in status;
    `false` restarts those trials with their parameters (next attempt) and the sweep ends with exactly
    the requested trials, the finished one not run again."""
    ns = kube.namespace
    manifest = pipeline_manifest("pause", ns, ensemble=None, serving=None)
    kube.apply(manifest)
    kube.finish(kube.current_job("pause", "prepare"), 1, {"status": "succeeded"})
    kube.finish(kube.current_job("pause", "trial-0000"), 2, trial_result(0.95))
    kube.current_job("pause", "trial-0002")  # parallelism 2: trial-0001 and trial-0002 now run
    before = {t["name"]: t for t in kube.status("pause")["trials"]}

    def set_suspend(value: bool) -> None:
        kube.custom.patch_namespaced_custom_object(
            "conveyor.dev", "v1alpha1", ns, "trainingpipelines", "pause", {"spec": {"suspend": value}}
        )

    set_suspend(True)
    status = kube.wait_status("pause", lambda s: s.get("phase") == "Suspended", "phase Suspended")
    states = {t["name"]: t["state"] for t in status["trials"]}
    assert states == {"trial-0000": "Succeeded", "trial-0001": "Suspended", "trial-0002": "Suspended"}
    finished_only = {"job/pause-trial-0000-0", "svc/pause-trial-0000-0"}
    kube.wait_for(
        lambda: {c for c in kube.children("pause") if "trial" in c} == finished_only,
        TIMEOUT,
        "the suspended trials' Jobs and Services deleted",
    )

    set_suspend(False)
    for name in ("trial-0001", "trial-0002", "trial-0003"):
        job = kube.current_job("pause", name)
        if name in before:
            assert job == f"pause-{name}-{before[name].get('attempt', 0) + 1}"
        kube.finish(job, 2, trial_result(0.96))
    status = kube.wait_status(
        "pause", lambda s: (s.get("stages", {}).get("tune") or {}).get("state") == "Succeeded", "tuned"
    )
    trials = {t["name"]: t for t in status["trials"]}
    assert sorted(trials) == ["trial-0000", "trial-0001", "trial-0002", "trial-0003"]
    assert {t["state"] for t in trials.values()} == {"Succeeded"}
    assert trials["trial-0000"].get("attempt", 0) == before["trial-0000"].get("attempt", 0)
    for name in ("trial-0001", "trial-0002"):
        assert trials[name]["params"] == before[name]["params"]

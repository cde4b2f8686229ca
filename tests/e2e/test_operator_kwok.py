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
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "conveyor"
REFERENCE = REPO / "manifests" / "examples" / "digits.yaml"
SIM_DELAY = "conveyor.dev/sim-delay"
SIM_EXIT = "conveyor.dev/sim-exit-code"
SIM_MESSAGE = "conveyor.dev/sim-termination-message"
TIMEOUT = 90.0


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=180, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def release(devcluster: Any, helm: str, kubectl: str, kubeconfig: Path) -> Iterator[str]:
    namespace = f"conveyor-system-{uuid.uuid4().hex[:5]}"
    sh(
        helm,
        "--kubeconfig",
        str(kubeconfig),
        "install",
        "conveyor",
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--set",
        "replicaCount=0",
        "--wait",
        "--timeout",
        "120s",
    )
    try:
        yield namespace
    finally:
        sh(
            helm,
            "--kubeconfig",
            str(kubeconfig),
            "uninstall",
            "conveyor",
            "--namespace",
            namespace,
            check=False,
        )
        sh(
            kubectl,
            "--kubeconfig",
            str(kubeconfig),
            "delete",
            "namespace",
            namespace,
            "--wait=false",
            check=False,
        )


class OperatorProcess:
    """`conveyor operator` as a subprocess, authenticated as the chart's ServiceAccount."""

    def __init__(self, kubeconfig: Path, namespace: str, workdir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log = workdir / "operator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.progress_port: int = sock.getsockname()[1]

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "conveyor.cli",
            "operator",
            "--kubeconfig",
            str(self.kubeconfig),
            "--namespace",
            self.namespace,
            "--image",
            "conveyor-trainer:e2e",
            "--metrics-port",
            "0",
            "--health-port",
            "0",
            "--progress-url",
            f"http://127.0.0.1:{self.progress_port}",
            "--progress-port",
            str(self.progress_port),
            "--resync",
            "1",
        ]
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def tail(self) -> str:
        return self.log.read_text()[-6000:] if self.log.exists() else ""


def sa_kubeconfig(kubeconfig: Path, kubectl: str, release: str, path: Path) -> Path:
    token = sh(
        kubectl,
        "--kubeconfig",
        str(kubeconfig),
        "-n",
        release,
        "create",
        "token",
        "conveyor",
        "--duration",
        "2h",
    ).stdout.strip()
    admin = yaml.safe_load(kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "conveyor", "user": {"token": token}}],
        "contexts": [{"name": "conveyor", "context": {"cluster": cluster["name"], "user": "conveyor"}}],
        "current-context": "conveyor",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def restricted(namespace: str, kubectl: str, kubeconfig: Path, k8s_api: Any) -> str:
    sh(
        kubectl,
        "--kubeconfig",
        str(kubeconfig),
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "--overwrite",
    )
    from kubernetes import client

    core: Any = client.CoreV1Api(k8s_api)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "conveyor-artifacts"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    return namespace


@pytest.fixture
def operator(
    release: str, restricted: str, kubeconfig: Path, kubectl: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    with running_operator(release, restricted, kubeconfig, kubectl, tmp_path) as process:
        yield process


@contextlib.contextmanager
def running_operator(
    release: str, namespace: str, kubeconfig: Path, kubectl: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator with the chart's ServiceAccount credentials, killed (log tail printed) afterwards."""
    process = OperatorProcess(
        sa_kubeconfig(kubeconfig, kubectl, release, tmp_path / "sa.kubeconfig"), namespace, tmp_path
    )
    process.start()
    try:
        yield process
    finally:
        process.kill()
        print(process.tail())


def pipeline_manifest(name: str, namespace: str, **changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    manifest["metadata"] = {"name": name, "namespace": namespace}
    spec = manifest["spec"]
    spec["tuning"].update({"trials": 4, "parallelism": 2, "pruner": "none"})
    spec["resources"].update({"workers": 2, "gpu": 1, "processesPerWorker": 1})
    spec["serving"]["replicas"] = 1
    spec["scheduling"] = {"annotations": {SIM_DELAY: "1h"}}
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return manifest


class Cluster:
    """Test-side helpers over the admin client: read the pipeline, play the trainer."""

    def __init__(self, api: Any, namespace: str, wait_for: Callable[..., Any]) -> None:
        from kubernetes import client

        self.core: Any = client.CoreV1Api(api)
        self.batch: Any = client.BatchV1Api(api)
        self.apps: Any = client.AppsV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.wait_for = wait_for

    def pipeline(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "conveyor.dev", "v1alpha1", self.namespace, "trainingpipelines", name
        )
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return self.pipeline(name).get("status") or {}

    def wait_status(self, name: str, check: Callable[[dict[str, Any]], Any], what: str) -> dict[str, Any]:
        result: dict[str, Any] = self.wait_for(
            lambda: (lambda s: s if check(s) else None)(self.status(name)), TIMEOUT, what
        )
        return result

    def job(self, name: str) -> dict[str, Any]:
        return self.batch.api_client.sanitize_for_serialization(
            self.batch.read_namespaced_job(name, self.namespace)
        )

    def pods(self, job: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={job}").items
        return [self.core.api_client.sanitize_for_serialization(p) for p in pods]

    def running_pods(self, job: str, count: int) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            pods = [p for p in self.pods(job) if p["status"].get("phase") == "Running"]
            return pods if len(pods) == count else None

        result: list[dict[str, Any]] = self.wait_for(ready, TIMEOUT, f"{count} running pods of Job {job}")
        return result

    def finish(self, job: str, count: int, result: dict[str, Any] | None, exit_code: int = 0) -> None:
        """End every pod of `job` as the trainer would: rank 0 writes the result to its termination log."""
        for pod in self.running_pods(job, count):
            index = (
                pod["metadata"].get("annotations", {}).get("batch.kubernetes.io/job-completion-index", "0")
            )
            annotations = {SIM_EXIT: str(exit_code), SIM_DELAY: "1ms"}
            if result is not None and index == "0":
                annotations[SIM_MESSAGE] = json.dumps({"event": "result", **result}, separators=(",", ":"))
            self.core.patch_namespaced_pod(
                pod["metadata"]["name"], self.namespace, {"metadata": {"annotations": annotations}}
            )

    def current_job(self, pipeline: str, workload: str) -> str:
        """The Job of `workload`'s current attempt (status says which), once it exists."""

        def find() -> str | None:
            status = self.status(pipeline)
            records = [*status.get("trials", []), *status.get("workloads", [])]
            record = next((r for r in records if r["name"] == workload), None)
            if record is None or record["state"] not in ("Pending", "Running"):
                return None
            name = f"{pipeline}-{workload}-{record.get('attempt', 0)}"
            return name if self.job(name) else None

        result: str = self.wait_for(find, TIMEOUT, f"the Job of {workload}")
        return result

    def children(self, name: str) -> list[str]:
        selector = f"conveyor.dev/pipeline={name}"
        found = [
            f"job/{j.metadata.name}"
            for j in self.batch.list_namespaced_job(self.namespace, label_selector=selector).items
        ]
        found += [
            f"svc/{s.metadata.name}"
            for s in self.core.list_namespaced_service(self.namespace, label_selector=selector).items
        ]
        found += [
            f"deploy/{d.metadata.name}"
            for d in self.apps.list_namespaced_deployment(self.namespace, label_selector=selector).items
        ]
        return found


def trial_result(value: float) -> dict[str, Any]:
    return {
        "status": "succeeded",
        "epochsRun": 30,
        "bestEpoch": 28,
        "objective": {"metric": "accuracy", "value": value},
        "metrics": {"accuracy": value, "loss": 1 - value},
    }


def eval_result(accuracy: float) -> dict[str, Any]:
    metrics = {
        "accuracy": accuracy,
        "precision": accuracy,
        "recall": accuracy,
        "f1": accuracy,
        "rocAuc": 0.99,
    }
    return {"status": "succeeded", "metrics": metrics}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def apply(kubectl: str, kubeconfig: Path, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "apply", "-f", "-"],
        input=yaml.safe_dump(manifest),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_reference_pipeline_from_apply_to_serving(
    operator: OperatorProcess,
    restricted: str,
    k8s_api: Any,
    kubectl: str,
    kubeconfig: Path,
    wait_for: Callable[..., Any],
) -> None:
    ns = restricted
    kube = Cluster(k8s_api, ns, wait_for)
    created = apply(kubectl, kubeconfig, pipeline_manifest("digits", ns))
    assert created.returncode == 0, created.stderr

    # prepare: a plain Job, owned by the pipeline, restricted-compliant, no GPU
    kube.wait_status("digits", lambda s: s.get("phase") == "Preparing", "phase Preparing")
    job = wait_for(lambda: kube.job("digits-prepare-0"), TIMEOUT, "Job digits-prepare-0")
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
    trial = wait_for(lambda: kube.job("digits-trial-0000-0"), TIMEOUT, "Job digits-trial-0000-0")
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
    wait_for(lambda: kube.job("digits-trial-0002-0"), TIMEOUT, "Job digits-trial-0002-0")
    operator.kill()
    kube.finish("digits-trial-0002-0", 2, trial_result(0.95))
    wait_for(
        lambda: all(p["status"]["phase"] == "Succeeded" for p in kube.pods("digits-trial-0002-0")),
        TIMEOUT,
        "trial-0002 pods done while the operator is down",
    )
    operator.start()
    kube.wait_status("digits", lambda s: s.get("tuning", {}).get("succeeded") == 3, "trial-0002 absorbed")
    kube.finish(kube.current_job("digits", "trial-0003"), 2, trial_result(0.94))
    status = kube.wait_status("digits", lambda s: s.get("phase") == "Training", "phase Training")
    trials = status["trials"]
    assert sorted(t["name"] for t in trials) == [f"trial-{n:04d}" for n in range(4)]
    assert all(t["state"] == "Succeeded" for t in trials)
    assert status["tuning"]["succeeded"] == 4 and status["tuning"]["failed"] == 0
    assert status["bestTrial"]["name"] == "trial-0001"
    trial_jobs = [j for j in kube.children("digits") if j.startswith("job/digits-trial-")]
    assert sorted(trial_jobs) == sorted(f"job/digits-{t['name']}-{t.get('attempt', 0)}" for t in trials)

    # train, evaluate, ensemble, gate, serve
    kube.finish("digits-train-0", 2, trial_result(0.97))
    kube.finish(
        wait_for(lambda: kube.job("digits-evaluate-model-0"), TIMEOUT)["metadata"]["name"],
        1,
        eval_result(0.97),
    )
    kube.finish(
        wait_for(lambda: kube.job("digits-ensemble-0"), TIMEOUT)["metadata"]["name"],
        1,
        {"status": "succeeded"},
    )
    kube.finish(
        wait_for(lambda: kube.job("digits-evaluate-ensemble-0"), TIMEOUT)["metadata"]["name"],
        1,
        eval_result(0.98),
    )
    sh(
        kubectl,
        "--kubeconfig",
        str(kubeconfig),
        "-n",
        ns,
        "wait",
        "--for=condition=Ready",
        "tp/digits",
        "--timeout=120s",
    )
    status = kube.status("digits")
    assert status["phase"] == "Serving"
    assert status["gate"]["passed"] is True and status["gate"]["candidate"] == "ensemble"
    assert status["serving"]["url"] == f"http://digits-serve.{ns}.svc:8080"
    deployment = kube.apps.read_namespaced_deployment("digits-serve", ns)
    assert deployment.status.ready_replicas == 1
    probe = deployment.spec.template.spec.containers[0].readiness_probe
    assert probe.http_get.path == "/v2/health/ready"

    printed = sh(kubectl, "--kubeconfig", str(kubeconfig), "-n", ns, "get", "tp", "digits").stdout
    assert "Serving" in printed and "accuracy=0.9600" in printed and "digits-serve" in printed
    events = kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=digits").items
    reasons = {e.reason for e in events}
    assert {"GatePassed", "ServingStarted"} <= reasons, reasons

    # deleting the pipeline removes every child (owner references, garbage collector)
    sh(kubectl, "--kubeconfig", str(kubeconfig), "-n", ns, "delete", "tp", "digits", "--wait=true")
    wait_for(lambda: kube.children("digits") == [], TIMEOUT, "no children left")


def test_gate_blocks_serving(
    operator: OperatorProcess,
    restricted: str,
    k8s_api: Any,
    kubectl: str,
    kubeconfig: Path,
    wait_for: Callable[..., Any],
) -> None:
    ns = restricted
    kube = Cluster(k8s_api, ns, wait_for)
    manifest = pipeline_manifest("weak", ns, tuning=None, ensemble=None)
    manifest["spec"]["resources"] = {"workers": 1, "cpu": "1", "memory": "2Gi"}
    assert apply(kubectl, kubeconfig, manifest).returncode == 0
    kube.finish(
        wait_for(lambda: kube.job("weak-prepare-0"), TIMEOUT)["metadata"]["name"], 1, {"status": "succeeded"}
    )
    kube.finish(
        wait_for(lambda: kube.job("weak-train-0"), TIMEOUT)["metadata"]["name"], 1, trial_result(0.81)
    )
    kube.finish(
        wait_for(lambda: kube.job("weak-evaluate-model-0"), TIMEOUT)["metadata"]["name"], 1, eval_result(0.80)
    )
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


def post_epoch(port: int, token: str, event: dict[str, Any]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/progress",
        data=json.dumps(event).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_progress_endpoint_drives_pruning(
    operator: OperatorProcess,
    restricted: str,
    k8s_api: Any,
    kubectl: str,
    kubeconfig: Path,
    wait_for: Callable[..., Any],
) -> None:
    """Epoch events pushed with a pod-bound projected token (audience conveyor.dev) reach status, and
    the median pruner stops a bad trial: its Job is deleted."""
    ns = restricted
    kube = Cluster(k8s_api, ns, wait_for)
    manifest = pipeline_manifest("prune", ns, ensemble=None, serving=None)
    manifest["spec"]["tuning"].update({"trials": 3, "parallelism": 1, "pruner": "median"})
    manifest["spec"]["training"]["epochs"] = 5
    assert apply(kubectl, kubeconfig, manifest).returncode == 0
    kube.finish(kube.current_job("prune", "prepare"), 1, {"status": "succeeded"})

    def token_for(job: str) -> str:
        pod = next(
            p
            for p in kube.running_pods(job, 2)
            if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == "0"
        )
        return sh(
            kubectl,
            "--kubeconfig",
            str(kubeconfig),
            "-n",
            ns,
            "create",
            "token",
            "default",
            "--audience",
            "conveyor.dev",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            pod["metadata"]["name"],
            "--bound-object-uid",
            pod["metadata"]["uid"],
        ).stdout.strip()

    good = kube.current_job("prune", "trial-0000")
    token = token_for(good)
    assert post_epoch(operator.progress_port, "not-a-token", {"event": "epoch", "epoch": 1}) == 403
    admin_token = sh(kubectl, "--kubeconfig", str(kubeconfig), "-n", ns, "create", "token", "default").stdout
    assert post_epoch(operator.progress_port, admin_token.strip(), {"event": "epoch", "epoch": 1}) == 403
    for epoch in range(1, 6):
        event = {"event": "epoch", "epoch": epoch, "epochs": 5, "metrics": {"accuracy": 0.9 + epoch / 100}}
        assert post_epoch(operator.progress_port, token, event) == 202
    status = kube.wait_status("prune", lambda s: s["trials"][0].get("epoch") == 5, "epochs of trial-0000")
    assert status["trials"][0]["values"] == [0.91, 0.92, 0.93, 0.94, 0.95]
    kube.finish(good, 2, trial_result(0.95))

    bad = kube.current_job("prune", "trial-0001")
    token = token_for(bad)
    for epoch in range(1, 4):
        event = {"event": "epoch", "epoch": epoch, "epochs": 5, "metrics": {"accuracy": 0.1}}
        post_epoch(operator.progress_port, token, event)
    status = kube.wait_status(
        "prune", lambda s: any(t["state"] == "Pruned" for t in s.get("trials", [])), "a pruned trial"
    )
    pruned = next(t for t in status["trials"] if t["state"] == "Pruned")
    assert pruned["name"] == "trial-0001"
    wait_for(lambda: f"job/{bad}" not in kube.children("prune"), TIMEOUT, f"Job {bad} deleted")
    events = kube.core.list_namespaced_event(ns, field_selector="involvedObject.name=prune").items
    assert "TrialPruned" in {e.reason for e in events}


def test_suspend_pauses_and_resumes_without_losing_trials(
    operator: OperatorProcess,
    restricted: str,
    k8s_api: Any,
    kubectl: str,
    kubeconfig: Path,
    wait_for: Callable[..., Any],
) -> None:
    """`spec.suspend: true` mid-sweep deletes the running trials' Jobs and keeps every trial in status;
    `false` restarts those trials with their parameters (next attempt) and the sweep ends with exactly
    the requested trials, the finished one not run again."""
    ns = restricted
    kube = Cluster(k8s_api, ns, wait_for)
    manifest = pipeline_manifest("pause", ns, ensemble=None, serving=None)
    assert apply(kubectl, kubeconfig, manifest).returncode == 0
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
    wait_for(
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

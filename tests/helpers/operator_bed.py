"""The operator on the test bed, driven from a test: the chart's ServiceAccount credentials, the operator
as a subprocess, and `Cluster`, which reads pipelines and plays the trainer on KWOK pods (through the
`conveyor.dev/sim-*` annotations) so a whole pipeline can be stepped without real training."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.manifests import REFERENCE, REPO

CHART = REPO / "charts" / "conveyor"
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

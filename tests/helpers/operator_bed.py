"""The operator on the test bed, driven from a test: the chart's ServiceAccount credentials, the operator
as a subprocess, and `Cluster`, which reads pipelines and plays the trainer on KWOK pods (through the
`conveyor.dev/sim-*` annotations) so a whole pipeline can be stepped without real training."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from conveyor.devcluster import kwok, podnet
from conveyor.devcluster.pytest_plugin import wait_for
from tests.helpers.manifests import REFERENCE, REPO

CHART = REPO / "charts" / "conveyor"
SIM_DELAY = "conveyor.dev/sim-delay"
SIM_EXIT = "conveyor.dev/sim-exit-code"
SIM_MESSAGE = "conveyor.dev/sim-termination-message"
TIMEOUT = 90.0
TLS_SECRET = "conveyor-progress-tls"  # the chart's progress CA Secret (release conveyor)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=180, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def leader_election_args(namespace: str, identity: str, lease: float = 4.0) -> list[str]:
    """`conveyor operator` flags for one replica of several: the chart's Lease (release `conveyor`),
    with timings short enough for tests (lease, renew deadline 3/4 of it, retry 1/8)."""
    return [
        "--leader-elect",
        f"--leader-election-namespace={namespace}",
        "--leader-election-id=conveyor",
        f"--identity={identity}",
        f"--lease-duration={lease}",
        f"--renew-deadline={lease * 0.75}",
        f"--retry-period={lease / 8}",
    ]


class OperatorProcess:
    """`conveyor operator` as a subprocess, authenticated as the chart's ServiceAccount, on the default
    (minutes-long) resync: watches and progress reports alone must drive every test. `extra`
    flags go last (they override); `name` names its log, for several processes in one workdir. With
    `tls_secret` (NAMESPACE/NAME, the chart's `<release>/conveyor-progress-tls`) its progress endpoint
    serves HTTPS from the CA in that Secret, as the chart's operator does (`ca()` reads it)."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        workdir: Path,
        name: str = "operator",
        extra: Sequence[str] = (),
        metrics_port: int | None = None,
        tls_secret: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.tls_secret = tls_secret
        self.namespace = namespace
        self.name = name
        self.log = workdir / f"{name}.log"
        self.extra = list(extra)
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.progress_port = free_port()
        self.progress_host = "127.0.0.1"  # where pods reach the progress endpoint

    def start(self) -> None:
        scheme = "https" if self.tls_secret else "http"
        tls = ["--progress-tls-secret", self.tls_secret] if self.tls_secret else []
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
            str(self.metrics_port or 0),
            "--health-port",
            "0",
            "--progress-url",
            f"{scheme}://{self.progress_host}:{self.progress_port}",
            "--progress-port",
            str(self.progress_port),
            "--progress-advertise-url",  # what a leader puts on its Lease (leader election only)
            f"{scheme}://127.0.0.1:{self.progress_port}",
            *tls,
            *self.extra,
        ]
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def ca(self) -> str:
        """The progress CA certificate (PEM) from `tls_secret`, once the operator has created it."""
        from kubernetes import client, config

        assert self.tls_secret, "started without TLS"
        namespace, name = self.tls_secret.split("/")
        core: Any = client.CoreV1Api(config.new_client_from_config(config_file=str(self.kubeconfig)))

        def read() -> str | None:
            data = core.read_namespaced_secret(name, namespace).data or {}
            return base64.b64decode(data["ca.crt"]).decode() if "ca.crt" in data else None

        ca: str = wait_for(read, TIMEOUT, f"the progress CA in Secret {self.tls_secret}")
        return ca

    def tail(self) -> str:
        return self.log.read_text()[-6000:] if self.log.exists() else ""

    def metric(self, name: str) -> float:
        """The sum of `name`'s samples on this process's /metrics (it must serve them)."""
        assert self.metrics_port, "started without a metrics port"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{")
        )


def start_replica(
    kubeconfig: Path,
    namespace: str,
    workdir: Path,
    release: str,
    name: str,
    lease: float = 4.0,
    extra: Sequence[str] = (),
    tls_secret: str | None = None,
) -> OperatorProcess:
    """One replica of several, started: `conveyor operator` leader-electing on the release's Lease
    (`leader_election_args`; `extra` flags go after them and override), serving metrics on a port
    of its own. Tests, the chaos run and the failover benchmark start their replicas this way."""
    process = OperatorProcess(
        kubeconfig,
        namespace,
        workdir,
        name,
        [*leader_election_args(release, name, lease), *extra],
        metrics_port=free_port(),
        tls_secret=tls_secret,
    )
    process.start()
    return process


def install_chart(helm: str, kubeconfig: Path, namespace: str, *flags: str) -> None:
    """`helm install` the chart as release `conveyor` into `namespace` (created) with no operator
    replica: the tests and benchmarks run the operator as processes of their own, with the chart's
    ServiceAccount (`sa_kubeconfig`). `flags` go last (e.g. --wait)."""
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
        *flags,
    )


@contextlib.contextmanager
def cluster_with_chart(prefix: str, release: str) -> Iterator[tuple[Any, Path, Path]]:
    """A fresh local control plane (its state in a new temporary directory named `prefix`..., stopped
    with this process) with the chart installed as `release` and no operator replica: (the
    `conveyor.devcluster.Cluster`, the state directory, the chart ServiceAccount's kubeconfig). Where
    the benchmarks that run operator replicas of their own start."""
    from conveyor.devcluster.cluster import Cluster as DevCluster
    from conveyor.devcluster.cluster import ClusterConfig, default_bin_dir

    state = Path(tempfile.mkdtemp(prefix=prefix))
    bin_dir = default_bin_dir()
    config = ClusterConfig(state_dir=state, bin_dir=bin_dir, owner_pid=os.getpid())
    with unwind_on_sigterm(), DevCluster(config) as cluster:
        kubeconfig, kubectl = cluster.kubeconfig, str(bin_dir / "kubectl")
        install_chart(str(bin_dir / "helm"), kubeconfig, release)
        yield cluster, state, sa_kubeconfig(kubeconfig, kubectl, release, state / "sa.kubeconfig")


@contextlib.contextmanager
def unwind_on_sigterm() -> Iterator[None]:
    """Within: SIGTERM raises SystemExit(143), so `with` blocks unwind as on Ctrl-C. A benchmark
    stopped with `kill` then stops the control plane it started (no pytest session reaps those)."""
    previous = signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def post_epoch(
    port: int,
    token: str,
    event: dict[str, Any],
    headers: dict[str, str] | None = None,
    ca: str | None = None,
    host: str = "127.0.0.1",
) -> int:
    """POST one epoch event to a progress endpoint on this machine, as the trainer does; the status.
    With `ca` (PEM), over https verified against that CA alone (`host` must be a name the endpoint's
    certificate holds: its progress URL's or advertised URL's host)."""
    context = ssl.create_default_context(cadata=ca) if ca else None
    request = urllib.request.Request(
        f"{'https' if ca else 'http'}://{host}:{port}/v1/progress",
        data=json.dumps(event).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


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
        sa_kubeconfig(kubeconfig, kubectl, release, tmp_path / "sa.kubeconfig"),
        namespace,
        tmp_path,
        tls_secret=f"{release}/{TLS_SECRET}",
    )
    # Local-node pods live in their own network namespaces: they reach the operator on the bridge.
    process.progress_host = podnet.host_address(kubeconfig.parent)
    process.start()
    try:
        yield process
    finally:
        process.kill()
        print(process.tail())


def namespace_with_artifacts(core: Any, namespace: str) -> str:
    """Create `namespace` with the artifacts claim pipelines mount (`conveyor-artifacts`, RWX)."""
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "conveyor-artifacts"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    return namespace


def install_crd(kubectl: str, kubeconfig: Path) -> None:
    """The generated CRD, applied and Established."""
    base = [kubectl, "--kubeconfig", str(kubeconfig)]
    sh(*base, "apply", "-f", str(REPO / "manifests" / "crd"))
    sh(*base, "wait", "--for=condition=Established", "crd/trainingpipelines.conveyor.dev", "--timeout=60s")


def served_model(kube: Cluster, model: str, port: int) -> Any:
    """An Open Inference Protocol client of the running serving pod, once the model is ready (the local
    node reports a started container Ready without probes; the server imports torch first)."""
    import tritonclient.http as httpclient

    from conveyor.operator.kubernetes.builders import LABEL_WORKLOAD

    serve = kube.core.list_namespaced_pod(kube.namespace, label_selector=f"{LABEL_WORKLOAD}=serve").items
    ip = next(p.status.pod_ip for p in serve if p.status.phase == "Running")
    client = httpclient.InferenceServerClient(url=f"{ip}:{port}", network_timeout=30)

    def ready() -> bool:
        try:
            return bool(client.is_model_ready(model))
        except Exception:  # connection refused while the server starts
            return False

    kube.wait_for(ready, 180, "the served model to be ready")
    return client


def pipeline_manifest(name: str, namespace: str, **changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    manifest["metadata"] = {"name": name, "namespace": namespace}
    spec = manifest["spec"]
    spec["tuning"].update({"trials": 4, "parallelism": 2, "pruner": "none"})
    spec["resources"].update({"workers": 2, "gpu": 1, "processesPerWorker": 1})
    spec["serving"]["replicas"] = 1
    # Simulated pods: on the KWOK nodes even where a stage asks for no GPU (those go to the local
    # node by default, where pods really run).
    spec["scheduling"] = {"annotations": {SIM_DELAY: "1h"}, **kwok.SIMULATED}
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return manifest


class Cluster:
    """Test-side helpers over the admin client: read the pipeline, play the trainer. With `kubectl` and
    `kubeconfig` also apply manifests and run kubectl in the namespace, as a user would."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        wait_for: Callable[..., Any],
        kubectl: str | None = None,
        kubeconfig: Path | None = None,
    ) -> None:
        from kubernetes import client

        self.core: Any = client.CoreV1Api(api)
        self.batch: Any = client.BatchV1Api(api)
        self.apps: Any = client.AppsV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.wait_for = wait_for
        self.kubectl_path = kubectl
        self.kubeconfig = kubeconfig

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`kubectl -n <namespace> ARGS` as the admin."""
        assert self.kubectl_path and self.kubeconfig, "Cluster made without kubectl and kubeconfig"
        return sh(
            self.kubectl_path, "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args, check=check
        )

    def apply(self, manifest: dict[str, Any]) -> None:
        """`kubectl apply` of `manifest`, which must succeed (kubectl's stderr when it does not)."""
        assert self.kubectl_path and self.kubeconfig, "Cluster made without kubectl and kubeconfig"
        created = apply(self.kubectl_path, self.kubeconfig, manifest)
        assert created.returncode == 0, created.stderr

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

    def serving(self, name: str, timeout: float) -> dict[str, Any]:
        """The status once the pipeline serves (fails the test, with the status, if it failed)."""

        def serving_or_failed() -> dict[str, Any] | None:
            s = self.status(name)
            return s if s.get("phase") == "Failed" or (s.get("serving") or {}).get("ready") else None

        status: dict[str, Any] = self.wait_for(serving_or_failed, timeout, f"{name} to serve")
        assert status["phase"] == "Serving", json.dumps(status, indent=1)[:3000]
        return status

    def job(self, name: str) -> dict[str, Any]:
        return self.batch.api_client.sanitize_for_serialization(
            self.batch.read_namespaced_job(name, self.namespace)
        )

    def wait_job(self, name: str) -> dict[str, Any]:
        """The Job `name`, once it exists."""
        job: dict[str, Any] = self.wait_for(lambda: self.job(name), TIMEOUT, f"Job {name}")
        return job

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

    def finish_once_created(self, job: str, count: int, result: dict[str, Any] | None) -> None:
        """`finish` the Job `job` once it exists."""
        self.wait_job(job)
        self.finish(job, count, result)

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

    def progress_token(self, job: str) -> str:
        """A projected token for the progress audience, bound to rank 0's pod of `job` (2 running), as
        the kubelet mounts it for the trainer."""
        pod = next(
            p
            for p in self.running_pods(job, 2)
            if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == "0"
        )
        return self.kubectl(
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

    def assert_sweep_succeeded(self, pipeline: str, status: dict[str, Any], trials: int) -> None:
        """Exactly `trials` trials in `status`, all Succeeded, and one Job per trial attempt: none
        created twice, none lost (what an operator killed mid-sweep must still hold to)."""
        records = status["trials"]
        assert sorted(t["name"] for t in records) == [f"trial-{n:04d}" for n in range(trials)]
        assert all(t["state"] == "Succeeded" for t in records)
        assert status["tuning"]["succeeded"] == trials and status["tuning"]["failed"] == 0
        jobs = [j for j in self.children(pipeline) if j.startswith(f"job/{pipeline}-trial-")]
        assert sorted(jobs) == sorted(f"job/{pipeline}-{t['name']}-{t.get('attempt', 0)}" for t in records)

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


def apply(
    kubectl: str, kubeconfig: Path, manifest: dict[str, Any], verb: str = "apply"
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` (or `create`) of `manifest`; the result, whatever it is."""
    return subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), verb, "-f", "-"],
        input=yaml.safe_dump(manifest),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

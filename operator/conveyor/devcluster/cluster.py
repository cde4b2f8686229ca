"""Start and stop the whole local control plane.

Order: PKI -> etcd (tmpfs, no fsync) -> kube-apiserver -> kube-controller-manager + kube-scheduler ->
GPU nodes + KWOK -> the node agent (local node, local kubelet, PV provisioner) -> wait until the nodes
are Ready and the ``default`` ServiceAccount exists. The GPU nodes are tainted ``nvidia.com/gpu`` and
the API server runs ExtendedResourceToleration, so pods asking for no GPU land on the (untainted)
local node, each in its own network namespace (``podnet``). Everything listens on free loopback ports; each
process logs to ``<state_dir>/logs/<name>.log``; ``state.json`` records what was started so that
``stop()`` (or ``conveyor dev-cluster down`` from another process) ends exactly those processes.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from conveyor.devcluster import kueue, kwok, podnet, processes
from conveyor.devcluster.pki import Pki, make_pki
from conveyor.devcluster.processes import Proc, StartError

REPO_ROOT = Path(__file__).resolve().parents[3]
LOCAL_NODE = "conveyor-local"
STORAGE_CLASS = "conveyor-local"
PROVISIONER = "conveyor.dev/local-path"


def _healthy(url: str, ca: Path) -> bool:
    return processes.http_get(url, ca=ca)[0] == 200


def cache_root() -> Path:
    return Path(os.environ.get("CONVEYOR_CACHE") or Path.home() / ".cache" / "conveyor")


def default_bin_dir() -> Path:
    """Where ``scripts/build-control-plane`` puts the binaries (``$CONVEYOR_BIN_DIR`` overrides)."""
    if os.environ.get("CONVEYOR_BIN_DIR"):
        return Path(os.environ["CONVEYOR_BIN_DIR"])
    script = REPO_ROOT / "scripts" / "build-control-plane"
    if script.exists():
        out = subprocess.run([str(script), "--print-bin-dir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    return cache_root() / "bin" / "v1.37.2"


REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")


def missing_binaries(bin_dir: Path) -> list[str]:
    return [b for b in (*REQUIRED_BINARIES, "helm") if not os.access(bin_dir / b, os.X_OK)]


@dataclass
class ClusterConfig:
    """What to start. ``state_dir`` holds PKI, kubeconfig, logs, pod sandboxes and volumes."""

    state_dir: Path
    bin_dir: Path = field(default_factory=default_bin_dir)
    gpu_nodes: int = 4
    gpus_per_node: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    gpu_node_cpu: str = "64"
    gpu_node_memory: str = "512Gi"
    local_node: bool = True
    #: nvidia.com/gpu the local node advertises, so GPU-requesting pod specs can run there on the CPU
    local_node_gpus: int = 0
    #: python whose ``bin`` directory leads PATH for local-node pods (so ``python -m ...`` works)
    pod_python: str = field(default_factory=lambda: sys.executable)
    start_timeout: float = 120.0
    #: pid of the process whose cluster this is (pytest); None for detached clusters (dev-cluster up)
    owner_pid: int | None = None
    #: also start Kueue (``start_kueue``): its CRDs, webhooks and the queues ``conveyor`` of all GPUs
    kueue: bool = False


class Cluster:
    """A running (or startable) local control plane. Use as a context manager or call start/stop."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.procs: list[Proc] = []
        self.ports: dict[str, int] = {}
        self.etcd_data = ""
        self.startup_seconds = 0.0

    # ---- paths --------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def binary(self, name: str) -> str:
        return str(self.config.bin_dir / name)

    # ---- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        missing = [b for b in REQUIRED_BINARIES if not os.access(self.config.bin_dir / b, os.X_OK)]
        if missing:
            raise StartError(
                f"missing control-plane binaries in {self.config.bin_dir}: {', '.join(missing)}; "
                "run scripts/build-control-plane"
            )
        if self.state_file.exists():
            with contextlib.suppress(Exception):
                Cluster.attach(self.state_dir).stop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            pki = make_pki(self.state_dir / "pki")
            self._start_etcd()
            self._start_apiserver(pki)
            self._write_kubeconfig(pki)
            self._start_controllers(pki)
            self._create_nodes_and_storage()
            self._start_kwok()
            if self.config.local_node:
                self._start_agent()
            self._wait_ready()
            if self.config.kueue:
                self.start_kueue()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop what this cluster started (agent first, so pod processes end), then remove tmpfs data."""
        for proc in reversed(self.procs):
            processes.stop(proc)
        self.procs = []
        podnet.cleanup(self.state_dir)  # what a killed agent left of the pod network
        if self.etcd_data:
            shutil.rmtree(self.etcd_data, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    @classmethod
    def attach(cls, state_dir: Path) -> Cluster:
        """A handle on a cluster started by another process (``conveyor dev-cluster``)."""
        state = json.loads((state_dir / "state.json").read_text())
        cluster = cls(ClusterConfig(state_dir=state_dir, bin_dir=Path(state["bin_dir"])))
        cluster.procs = [Proc.from_dict(p) for p in state["procs"]]
        cluster.ports = {k: int(v) for k, v in state["ports"].items()}
        cluster.etcd_data = state.get("etcd_data", "")
        return cluster

    def local_pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """The output of a local-node pod's container (``kubectl logs`` has no kubelet to ask)."""
        logs = sorted(self.state_dir.glob(f"pods/{namespace}_{pod}_*/logs/{container or '*'}.log"))
        return "".join(p.read_text(errors="replace") for p in logs[-1:])

    def running(self) -> dict[str, bool]:
        return {p.name: p.alive() for p in self.procs}

    def _save(self) -> None:
        state = {
            "bin_dir": str(self.config.bin_dir),
            "procs": [p.to_dict() for p in self.procs],
            "ports": self.ports,
            "etcd_data": self.etcd_data,
            "kubeconfig": str(self.kubeconfig),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    def _spawn(self, name: str, argv: list[str], marker: str | None = None) -> Proc:
        proc = processes.spawn(name, argv, self.log_dir, marker or str(self.state_dir))
        self.procs.append(proc)
        self._save()
        return proc

    # ---- components ---------------------------------------------------------------------------
    def _start_etcd(self) -> None:
        client, peer = processes.free_port(), processes.free_port()
        self.ports["etcd"] = client
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else self.state_dir
        self.etcd_data = str(shm / f"conveyor-etcd-{os.getpid()}-{random.randrange(1 << 30):x}")
        url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        proc = self._spawn(
            "etcd",
            [
                self.binary("etcd"), "--name=conveyor", f"--data-dir={self.etcd_data}",
                f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=conveyor={peer_url}", "--unsafe-no-fsync=true", "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
            marker=self.etcd_data,
        )  # fmt: skip
        processes.wait_until(
            "etcd /health", lambda: '"true"' in processes.http_get(f"{url}/health")[1], 30, proc
        )

    def restart_apiserver(self) -> float:
        """Stop kube-apiserver and start it again in place (same port, etcd, PKI and flags), as a
        control-plane upgrade or crash does; every client keeps its kubeconfig and must reconnect. The
        seconds until it was ready again (`benchmarks/chaos.py` injects this fault)."""
        index = next(i for i, p in enumerate(self.procs) if p.name == "kube-apiserver")
        t0 = time.monotonic()
        processes.stop(self.procs.pop(index))
        self._start_apiserver(make_pki(self.state_dir / "pki"), self.ports["apiserver"])
        self.procs.insert(index, self.procs.pop())  # stop() order unchanged: after the controllers
        self._save()
        return time.monotonic() - t0

    def _start_apiserver(self, pki: Pki, port: int | None = None) -> None:
        port = self.ports["apiserver"] = port or processes.free_port()
        proc = self._spawn(
            "kube-apiserver",
            [
                self.binary("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
                f"--cert-dir={self.state_dir / 'pki'}",
                f"--tls-cert-file={pki.serving_crt}", f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_crt}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--service-cluster-ip-range=127.203.0.0/24", "--authorization-mode=Node,RBAC",
                "--allow-privileged=true", "--profiling=false", "--v=1",
                # 127.0.0.1 may not be an endpoint of the kubernetes Service: no reconciler.
                "--endpoint-reconciler-type=none",
                "--kubelet-preferred-address-types=InternalIP",
                # PodSecurity, ServiceAccount and DefaultStorageClass are in the default plugin set.
                # ExtendedResourceToleration: pods asking for nvidia.com/gpu tolerate the GPU nodes'
                # taint, so CPU pods land on the (untainted) local node, as on a real cluster.
                "--enable-admission-plugins=NodeRestriction,ExtendedResourceToleration",
            ],
        )  # fmt: skip
        processes.wait_until(
            "kube-apiserver /readyz",
            lambda: processes.http_get(f"{self.api_url}/readyz", ca=pki.ca_crt)[0] == 200,
            self.config.start_timeout,
            proc,
        )

    def _write_kubeconfig(self, pki: Pki) -> None:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "conveyor",
                    "cluster": {"server": self.api_url, "certificate-authority-data": b64(pki.ca_crt)},
                }
            ],
            "users": [
                {
                    "name": "conveyor-admin",
                    "user": {
                        "client-certificate-data": b64(pki.admin_crt),
                        "client-key-data": b64(pki.admin_key),
                    },
                }
            ],
            "contexts": [{"name": "conveyor", "context": {"cluster": "conveyor", "user": "conveyor-admin"}}],
            "current-context": "conveyor",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)
        self._save()

    def _start_controllers(self, pki: Pki) -> None:
        kc = str(self.kubeconfig)
        common = [
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--tls-cert-file={pki.serving_crt}", f"--tls-private-key-file={pki.serving_key}", "--v=1",
        ]  # fmt: skip
        kcm_port = self.ports["controller-manager"] = processes.free_port()
        kcm = self._spawn(
            "kube-controller-manager",
            [
                self.binary("kube-controller-manager"), *common, f"--secure-port={kcm_port}",
                f"--root-ca-file={pki.ca_crt}", f"--service-account-private-key-file={pki.sa_key}",
                f"--cluster-signing-cert-file={pki.ca_crt}", f"--cluster-signing-key-file={pki.ca_key}",
                "--use-service-account-credentials=false", "--controllers=*",
            ],
        )  # fmt: skip
        sched_port = self.ports["scheduler"] = processes.free_port()
        sched = self._spawn(
            "kube-scheduler", [self.binary("kube-scheduler"), *common, f"--secure-port={sched_port}"]
        )
        for proc, port in ((kcm, kcm_port), (sched, sched_port)):
            url = f"https://127.0.0.1:{port}/healthz"
            processes.wait_until(
                f"{proc.name} /healthz",
                functools.partial(_healthy, url, pki.ca_crt),
                self.config.start_timeout,
                proc,
            )

    def api(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this cluster (admin)."""
        from kubernetes import config as kconfig

        return kconfig.new_client_from_config(config_file=str(self.kubeconfig))

    def _create_nodes_and_storage(self) -> None:
        from kubernetes import client

        api = self.api()
        core: Any = client.CoreV1Api(api)
        for i in range(self.config.gpu_nodes):
            node = kwok.gpu_node(
                f"gpu-node-{i}", self.config.gpus_per_node, self.config.gpu_product,
                cpu=self.config.gpu_node_cpu, memory=self.config.gpu_node_memory,
            )  # fmt: skip
            core.create_node(node)
            # Node status is not taken from a create; set capacity through the status subresource.
            core.patch_node_status(node["metadata"]["name"], {"status": node["status"]})
        storage: Any = client.StorageV1Api(api)
        storage.create_storage_class(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": STORAGE_CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": PROVISIONER,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "Immediate",
            }
        )

    def _start_kwok(self) -> None:
        config = self.state_dir / "kwok.yaml"
        node_stages = sorted((self.config.bin_dir / "kwok-stages").glob("*.yaml"))
        if not node_stages:
            raise StartError(
                f"no KWOK node stages in {self.config.bin_dir}/kwok-stages; run scripts/build-control-plane"
            )
        docs = [d for f in node_stages for d in yaml.safe_load_all(f.read_text()) if d]
        config.write_text(yaml.safe_dump_all([*docs, *kwok.pod_stages()], sort_keys=False))
        port = self.ports["kwok"] = processes.free_port()
        self._spawn(
            "kwok",
            [
                self.binary("kwok"), f"--kubeconfig={self.kubeconfig}", f"--config={config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-label-selector={kwok.NODE_LABEL}={kwok.NODE_LABEL_VALUE}",
                f"--server-address=127.0.0.1:{port}", "--node-ip=127.0.0.1", "--cidr=127.202.0.0/16",
                "--node-lease-duration-seconds=40",
            ],
        )  # fmt: skip

    def _start_agent(self) -> None:
        self._spawn(
            "node-agent",
            [
                self.config.pod_python, "-m", "conveyor.devcluster.agent", f"--state-dir={self.state_dir}",
                f"--kubeconfig={self.kubeconfig}", f"--node-name={LOCAL_NODE}",
                f"--pod-python={self.config.pod_python}", f"--gpus={self.config.local_node_gpus}",
            ],
        )  # fmt: skip

    def _wait_ready(self) -> None:
        from kubernetes import client

        core: Any = client.CoreV1Api(self.api())
        want = {f"gpu-node-{i}" for i in range(self.config.gpu_nodes)}
        if self.config.local_node:
            want.add(LOCAL_NODE)

        def nodes_ready() -> bool:
            ready = set()
            for node in core.list_node().items:
                conds = {c.type: c.status for c in (node.status.conditions or [])}
                taints = {t.key for t in (node.spec.taints or [])}
                if conds.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints:
                    ready.add(node.metadata.name)
            return want <= ready

        self._wait_with_procs("nodes Ready", nodes_ready)
        self._wait_with_procs(
            "ServiceAccount default/default",
            lambda: bool(core.read_namespaced_service_account("default", "default")),
        )

    def kueue_running(self) -> bool:
        return any(p.name == "kueue" and p.alive() for p in self.procs)

    def start_kueue(self) -> None:
        """Start Kueue against this (running) cluster: its CRDs, its webhooks (see ``kueue``), the
        controller-manager, then ResourceFlavor ``conveyor-default``, ClusterQueue ``conveyor`` with
        every GPU of the nodes as quota and LocalQueue ``default/conveyor``. A no-op when it runs."""
        from kubernetes import client

        if self.kueue_running():
            return
        assets = kueue.asset_dir(self.config.bin_dir)
        if not os.access(self.config.bin_dir / "kueue", os.X_OK) or not (assets / "crds").is_dir():
            raise StartError(f"Kueue is not built in {self.config.bin_dir}; run scripts/build-control-plane")
        work = self.state_dir / "kueue"
        work.mkdir(parents=True, exist_ok=True)
        port = self.ports["kueue-webhook"] = processes.free_port()
        self._kubectl_apply(work / "service.yaml", kueue.webhook_service(port))
        core: Any = client.CoreV1Api(self.api())
        cluster_ip = core.read_namespaced_service(kueue.SERVICE, kueue.NAMESPACE).spec.cluster_ip
        crds = kueue.crds(assets, port)
        self._kubectl_apply(work / "crds.yaml", [*crds, *kueue.webhook_configurations(assets, port)])
        names = [f"crd/{c['metadata']['name']}" for c in crds]
        self._kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        health = self.ports["kueue-health"] = processes.free_port()
        metrics = self.ports["kueue-metrics"] = processes.free_port()
        config = work / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                kueue.configuration(
                    webhook_host=cluster_ip, webhook_port=port, cert_dir=work / "certs",
                    health_port=health, metrics_port=metrics,
                )
            )
        )  # fmt: skip
        proc = processes.spawn(
            "kueue",
            # The visibility API server needs an APIService and binds 0.0.0.0; the test bed uses neither.
            [self.binary("kueue"), f"--config={config}", "--feature-gates=VisibilityOnDemand=false"],
            self.log_dir,
            str(self.state_dir),
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )
        self.procs.append(proc)
        self._save()
        certs = work / "certs"
        processes.wait_until(
            "kueue /readyz",
            lambda: (
                self._mount_kueue_certs(core, certs)
                and processes.http_get(f"http://127.0.0.1:{health}/readyz")[0] == 200
            ),
            self.config.start_timeout,
            proc,
        )
        # From the nodes, not the config: an attached cluster (dev-cluster) has only its defaults.
        nodes = core.list_node().items
        gpus = sum(int((n.status.allocatable or {}).get(kwok.GPU_RESOURCE, "0")) for n in nodes)
        queues = [
            kueue.resource_flavor(),
            kueue.cluster_queue(kueue.CLUSTER_QUEUE, gpus),
            kueue.local_queue(kueue.LOCAL_QUEUE, "default", kueue.CLUSTER_QUEUE),
        ]
        # Ready: the webhook server listens; the API server may take a moment more to trust its CA.
        self._wait_with_procs(
            "Kueue's webhooks to accept the queues",
            lambda: (
                self._mount_kueue_certs(core, certs)
                and self._kubectl_apply(work / "queues.yaml", queues, check=False).returncode == 0
            ),
        )

    @staticmethod
    def _mount_kueue_certs(core: Any, cert_dir: Path) -> bool:
        """Play the kubelet's part for Kueue's Secret volume: Kueue writes its certificates to the
        Secret and waits for them to appear in its cert dir. True once the files match the Secret."""
        data = core.read_namespaced_secret(kueue.SECRET, kueue.NAMESPACE).data or {}
        if not all(data.get(k) for k in kueue.CERT_FILES):
            return False
        cert_dir.mkdir(parents=True, exist_ok=True)
        for key in kueue.CERT_FILES:
            content = base64.b64decode(data[key])
            path = cert_dir / key
            if not path.exists() or path.read_bytes() != content:
                tmp = cert_dir / f".{key}.tmp"
                tmp.write_bytes(content)
                tmp.chmod(0o600)
                tmp.replace(path)
        return True

    def stop_kueue(self) -> None:
        """Stop Kueue and remove its webhook configurations (which would otherwise refuse every Job)."""
        self._kubectl(
            "delete", "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            "kueue-mutating-webhook-configuration", "kueue-validating-webhook-configuration",
            "--ignore-not-found", check=False,
        )  # fmt: skip
        for proc in [p for p in self.procs if p.name == "kueue"]:
            processes.stop(proc)
            self.procs.remove(proc)
        self._save()

    def _kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [self.binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if check and out.returncode != 0:
            raise StartError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out

    def _kubectl_apply(
        self, path: Path, objects: list[dict[str, Any]], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        return self._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path), check=check)

    def _wait_with_procs(self, what: str, check: Any) -> None:
        deadline = time.monotonic() + self.config.start_timeout
        while True:
            with contextlib.suppress(Exception):
                if check():
                    return
            for proc in self.procs:
                if not proc.alive():
                    raise StartError(
                        f"{proc.name} exited while waiting for {what}; log {proc.log}:\n{proc.log_tail()}"
                    )
            if time.monotonic() > deadline:
                raise StartError(f"timed out waiting for {what}; logs in {self.log_dir}")
            time.sleep(0.2)

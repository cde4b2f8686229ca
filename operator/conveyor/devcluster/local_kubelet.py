"""The local kubelet: pods bound to the local node really run, as local processes.

For each pod it: gives the pod its own network namespace and address on the local node's bridge
(``podnet``; without root, a loopback address 127.N.x.y on the host's network) and reports it as
``status.podIP``;
maps volumes to local directories (emptyDir -> a sandbox directory, PVC -> the directory of the bound
hostPath PV, configMap/secret/downwardAPI/projected -> files); runs init containers in order, then the
containers, each as ``command + args`` with the container's environment (downward API included);
reports phase, exit codes and the termination message; kills the processes of deleted pods.

Isolation (when ``unshare`` works, i.e. as root): each container runs in its own mount and UTS
namespace, so volumes are bind-mounted at their real ``mountPath``, the termination-message file at
``terminationMessagePath``, the hostname is the pod's, and a cluster-wide hosts file is bind-mounted
over ``/etc/hosts`` (pod hostnames and ``<hostname>.<subdomain>.<ns>.svc.cluster.local``), and a
``resolv.conf`` naming only 127.0.0.1 over ``/etc/resolv.conf``, so other names fail at once instead of
leaving the machine. The host's own files are never modified. Mount points that did not exist on the
host are created (empty) and removed on shutdown. The containers of a pod share its network
namespace, as on a real node, so pods never collide on ports (two torchrun rank-0 agents on 29500,
two serving replicas on one port). The ``image`` is ignored: a container must give ``command``.
Probes are not run: a started container is Ready.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from conveyor.devcluster import podnet, podspec

log = logging.getLogger("conveyor.devcluster.local_kubelet")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _can_unshare() -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    r = subprocess.run(["unshare", "--mount", "--uts", "true"], capture_output=True, check=False)
    return r.returncode == 0


class HostsFile:
    """The hosts file bind-mounted over /etc/hosts in every pod (the same inode, so every pod sees
    each change).

    Pods read it at every name lookup, concurrently with changes, so it is never truncated while
    pods may read it: a new pod's line is appended (one write), and a finished pod's line stays
    (its names are not looked up any more). Rewriting it for every pod that ended was a window in
    which a starting pod could read an empty file and fail to resolve its own hostname (gloo does
    that to pick its address). Only when a name comes back with another address is the file
    rewritten, in place, without truncating first: the newest line must be the first match.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else "127.0.0.1 localhost\n"
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[str, list[str]]] = {}  # uid -> (ip, names), every pod seen
        self.path.write_text(self._render())

    def _render(self) -> str:
        lines = [self.base.rstrip("\n"), "# conveyor local-node pods"]
        lines += [f"{ip}\t{' '.join(names)}" for ip, names in self.entries.values()]
        return "\n".join(lines) + "\n"

    def set(self, uid: str, ip: str, names: list[str]) -> None:
        with self.lock:
            shadowed = [
                other
                for other, (old_ip, old_names) in self.entries.items()
                if other != uid and old_ip != ip and set(old_names) & set(names)
            ]
            for other in shadowed:
                del self.entries[other]
            self.entries[uid] = (ip, names)
            if shadowed:
                text = self._render().encode()
                with open(self.path, "r+b") as f:
                    f.write(text)
                    f.truncate()
            else:
                with open(self.path, "ab") as f:
                    f.write(f"{ip}\t{' '.join(names)}\n".encode())


class PodRun(threading.Thread):
    """One pod on the local node: prepares its sandbox, runs its containers, reports status."""

    def __init__(self, kubelet: LocalKubelet, pod: dict[str, Any], network: podnet.PodNetwork) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}-{meta['name']}", daemon=True)
        self.kubelet, self.pod, self.network, self.ip = kubelet, pod, network, network.ip
        self.uid, self.ns, self.pod_name = meta["uid"], meta["namespace"], meta["name"]
        self.dir = kubelet.pods_dir / f"{self.ns}_{self.pod_name}_{self.uid[:8]}"
        self.stopping = threading.Event()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()

    # ---- status -------------------------------------------------------------------------------
    def patch_status(self, status: dict[str, Any]) -> None:
        if self.stopping.is_set():
            return
        with contextlib.suppress(ApiException):
            self.kubelet.core.patch_namespaced_pod_status(self.pod_name, self.ns, {"status": status})

    def conditions(self, ready: bool, initialized: bool = True, reason: str = "") -> list[dict[str, Any]]:
        t = now()

        def cond(kind: str, ok: bool) -> dict[str, Any]:
            c: dict[str, Any] = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": t}
            if not ok and reason:
                c["reason"] = reason
            return c

        return [
            cond("PodReadyToStartContainers", True),
            cond("Initialized", initialized),
            cond("ContainersReady", ready),
            cond("Ready", ready),
        ]

    # ---- main ---------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # report, never crash the agent
            log.exception("pod %s/%s failed to run", self.ns, self.pod_name)
            self.patch_status(
                {
                    "phase": "Failed",
                    "reason": "LocalKubeletError",
                    "message": str(e)[:1000],
                    "conditions": self.conditions(False, reason="LocalKubeletError"),
                }
            )
        finally:
            self.kubelet.release(self.network)  # its hosts line stays: see HostsFile

    def _run(self) -> None:
        spec = self.pod["spec"]
        self.dir.mkdir(parents=True, exist_ok=True)
        started = now()
        self.pod.setdefault("status", {}).update(
            {
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
            }
        )
        self.kubelet.hosts.set(self.uid, self.ip, podspec.dns_names(self.pod))
        volumes = self.kubelet.prepare_volumes(self.pod, self.dir / "volumes")
        base = {
            "status": {
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "startTime": started,
            }
        }
        init = spec.get("initContainers") or []
        if init:
            self.patch_status(
                {**base["status"], "phase": "Pending", "conditions": self.conditions(False, False)}
            )
        for c in init:
            code, msg = self._run_container(c, volumes)
            if code != 0:
                self._finish("Failed", {c["name"]: (code, msg)}, init_failed=True)
                return
        containers = spec["containers"]
        restarts = dict.fromkeys((c["name"] for c in containers), 0)
        policy = spec.get("restartPolicy", "Always")
        results: dict[str, tuple[int, str]] = {}
        while True:
            threads, results = [], {}
            for c in containers:
                t = threading.Thread(target=self._run_into, args=(c, volumes, results))
                threads.append(t)
                t.start()
            time.sleep(0.05)
            self.patch_status(
                {
                    **base["status"],
                    "phase": "Running",
                    "conditions": self.conditions(True),
                    "containerStatuses": [
                        self._container_status(c, {"running": {"startedAt": now()}}, restarts[c["name"]])
                        for c in containers
                    ],
                }
            )
            for t in threads:
                t.join()
            if self.stopping.is_set():
                return
            failed = any(code != 0 for code, _ in results.values())
            if policy == "Always" or (policy == "OnFailure" and failed):
                for name in restarts:
                    restarts[name] += 1
                time.sleep(min(10.0, 0.5 * 2 ** min(restarts[containers[0]["name"]], 5)))
                continue
            self._finish("Failed" if failed else "Succeeded", results, restarts=restarts)
            return

    def _run_into(
        self, c: Mapping[str, Any], volumes: dict[str, Path], out: dict[str, tuple[int, str]]
    ) -> None:
        try:
            out[c["name"]] = self._run_container(c, volumes)
        except Exception as e:
            log.exception("container %s of %s/%s", c["name"], self.ns, self.pod_name)
            out[c["name"]] = (128, f"local kubelet could not start the container: {e}")

    def _container_status(
        self, c: Mapping[str, Any], state: dict[str, Any], restarts: int = 0
    ) -> dict[str, Any]:
        running = "running" in state
        return {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "containerID": f"local://{self.uid}/{c['name']}",
            "ready": running,
            "started": running,
            "restartCount": restarts,
            "state": state,
        }

    def _finish(
        self,
        phase: str,
        results: dict[str, tuple[int, str]],
        init_failed: bool = False,
        restarts: dict[str, int] | None = None,
    ) -> None:
        t = now()
        statuses = []
        for c in self.pod["spec"]["containers"]:
            code, msg = results.get(c["name"], (1, "not started: an init container failed"))
            term: dict[str, Any] = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": t,
                "finishedAt": t,
            }
            if msg:
                term["message"] = msg
            statuses.append(
                self._container_status(c, {"terminated": term}, (restarts or {}).get(c["name"], 0))
            )
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": self.conditions(False, initialized=not init_failed, reason="PodCompleted"),
            "containerStatuses": statuses,
        }
        if init_failed:
            status["initContainerStatuses"] = [
                self._container_status(
                    c, {"terminated": {"exitCode": code, "reason": "Error", "message": msg}}
                )
                for c in self.pod["spec"].get("initContainers") or []
                if c["name"] in results
                for code, msg in [results[c["name"]]]
            ]
        self.patch_status(status)

    # ---- one container -------------------------------------------------------------------------
    def _run_container(self, c: Mapping[str, Any], volumes: dict[str, Path]) -> tuple[int, str]:
        if self.stopping.is_set():
            return 137, ""
        name = c["name"]
        home = self.dir / "home"
        home.mkdir(exist_ok=True)
        base_env = {
            "PATH": self.kubelet.path_env,
            "HOME": str(home),
            "HOSTNAME": podspec.hostname(self.pod),
            "LANG": "C.UTF-8",
        }
        env = podspec.container_env(self.pod, c, base_env, self.kubelet.lookup)
        argv = [podspec.expand(a, env) for a in (c.get("command") or []) + (c.get("args") or [])]
        if not c.get("command"):
            raise ValueError(f"container {name}: the local node ignores images and needs an explicit command")
        term_file = self.dir / "termination" / name
        term_file.parent.mkdir(exist_ok=True)
        term_file.write_text("")
        term_path = c.get("terminationMessagePath") or "/dev/termination-log"
        mounts: list[tuple[Path, str, bool]] = []
        for m in c.get("volumeMounts") or []:
            src = volumes[m["name"]]
            if m.get("subPath"):
                src = src / m["subPath"]
                if not src.exists():
                    src.mkdir(parents=True)
            mounts.append((src, m["mountPath"], bool(m.get("readOnly"))))
        mounts.append((term_file, term_path, False))
        workdir = c.get("workingDir") or str(home)
        log_path = self.dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(exist_ok=True)
        if self.kubelet.isolate:
            argv = self.kubelet.isolated_argv(
                argv, mounts, podspec.hostname(self.pod), workdir, self.network.netns_path
            )
            cwd = "/"
        else:
            env = {k: _rewrite(v, mounts) for k, v in env.items()}
            argv = [_rewrite(a, mounts) for a in argv]
            workdir = _rewrite(workdir, mounts)
            Path(workdir).mkdir(parents=True, exist_ok=True)
            cwd = workdir
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        with self.lock:
            self.procs[name] = proc
        code = proc.wait()
        with self.lock:
            self.procs.pop(name, None)
        if code < 0:
            code = 128 - code  # killed by signal N -> 128 + N
        msg = term_file.read_text(errors="replace")[:4096]
        if not msg and code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = log_path.read_text(errors="replace").splitlines()[-80:]
            msg = "\n".join(lines)[-2048:]
        return code, msg

    def kill(self, grace: float) -> None:
        """Stop the pod's processes: SIGTERM, then SIGKILL after ``grace`` seconds."""
        self.stopping.set()
        with self.lock:
            procs = list(self.procs.values())
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.join(timeout=5)


def _host_path(path: str, kind: str | None) -> Path:
    """A hostPath source, created as the kubelet does for ``DirectoryOrCreate``/``FileOrCreate``."""
    p = Path(path)
    if kind == "DirectoryOrCreate":
        p.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate" and not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    elif kind == "Directory" and not p.is_dir():
        raise ValueError(f"hostPath {path} is not a directory")
    elif kind == "File" and not p.is_file():
        raise ValueError(f"hostPath {path} is not a file")
    return p


def _rewrite(value: str, mounts: list[tuple[Path, str, bool]]) -> str:
    """Without mount namespaces: map mount paths to their local directories by prefix."""
    for src, dst, _ in sorted(mounts, key=lambda m: -len(m[1])):
        if value == dst or value.startswith(dst.rstrip("/") + "/"):
            return str(src) + value[len(dst) :]
    return value


class LocalKubelet:
    """Runs the pods bound to ``node_name``. Call ``sync()`` periodically; ``shutdown()`` at the end."""

    def __init__(self, api: client.ApiClient, node_name: str, state_dir: Path, pod_python: str) -> None:
        self.api = api
        self.core: Any = client.CoreV1Api(api)
        self.node_name = node_name
        self.state_dir = state_dir
        self.pods_dir = state_dir / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.path_env = os.pathsep.join(
            [str(Path(pod_python).parent), os.environ.get("PATH", "/usr/bin:/bin")]
        )
        # The pod's python and the code it imports live on the host. A volume mounted over one of
        # their parents (an emptyDir at /tmp while the checkout is under /tmp) must not hide them.
        self.keep_visible = sorted(
            {Path(pod_python).parent.parent, *(Path(p) for p in sys.path if p and Path(p).is_dir())}
        )
        self.isolate = _can_unshare()
        # One network namespace per pod on a bridge (root and iproute2); else the host's network.
        self.bridge = podnet.Bridge(state_dir) if self.isolate and shutil.which("ip") else None
        self.shell = shutil.which("bash") or "/bin/bash"  # descriptors above 9 (dash stops at 9)
        self.hosts = HostsFile(state_dir / "hosts")
        # Pods resolve names from the hosts file only: DNS goes to loopback, where nothing answers.
        self.resolv_conf = state_dir / "resolv.conf"
        self.resolv_conf.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        self.runs: dict[str, PodRun] = {}
        self.net = random.randrange(100, 200)
        self.next_ip = 2
        self.created_mountpoints: list[Path] = []
        self.mountpoints_lock = threading.Lock()
        self.mountpoints_file = state_dir / "created-mountpoints.json"
        log.info(
            "local kubelet for node %s (mount/UTS namespaces: %s; pod network: %s)",
            node_name, self.isolate, self.bridge and f"{self.bridge.name} {self.bridge.subnet}",
        )  # fmt: skip

    # ---- lookups used by env and volumes -------------------------------------------------------
    def lookup(self, kind: str, ns: str, name: str) -> dict[str, str] | None:
        try:
            if kind == "configMapRef":
                return dict(self.core.read_namespaced_config_map(name, ns).data or {})
            secret = self.core.read_namespaced_secret(name, ns)
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.data or {}).items()}
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def volume_data(self, kind: str, ns: str, name: str) -> dict[str, str | bytes]:
        """The files a configMap or secret volume holds: a ConfigMap's `data` and, as a kubelet does,
        its `binaryData` (bytes: a packed code directory)."""
        found: dict[str, str | bytes] = dict(self.lookup(kind, ns, name) or {})
        if kind == "configMapRef":
            try:
                binary = self.core.read_namespaced_config_map(name, ns).binary_data or {}
            except ApiException as e:
                if e.status != 404:
                    raise
                binary = {}
            found.update({k: base64.b64decode(v) for k, v in binary.items()})
        return found

    def _files(
        self, target: Path, data: Mapping[str, str | bytes], items: list[dict[str, Any]] | None
    ) -> None:
        target.mkdir(parents=True, exist_ok=True)
        pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        for key, rel in pairs:
            if key in data:
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                value = data[key]
                if isinstance(value, bytes):
                    (target / rel).write_bytes(value)
                else:
                    (target / rel).write_text(value)

    def prepare_volumes(self, pod: dict[str, Any], root: Path) -> dict[str, Path]:
        """Local directories for the pod's volumes."""
        out: dict[str, Path] = {}
        ns = pod["metadata"]["namespace"]
        for v in pod["spec"].get("volumes") or []:
            name, target = v["name"], root / v["name"]
            if "persistentVolumeClaim" in v:
                pvc = self.core.read_namespaced_persistent_volume_claim(
                    v["persistentVolumeClaim"]["claimName"], ns
                )
                if not pvc.spec.volume_name:
                    raise ValueError(f"PVC {ns}/{pvc.metadata.name} is not bound")
                pv = self.core.read_persistent_volume(pvc.spec.volume_name)
                if pv.spec.host_path:
                    out[name] = _host_path(pv.spec.host_path.path, pv.spec.host_path.type)
                else:
                    out[name] = Path(pv.spec.local.path)
                continue
            if "hostPath" in v:
                out[name] = _host_path(v["hostPath"]["path"], v["hostPath"].get("type"))
                continue
            target.mkdir(parents=True, exist_ok=True)
            out[name] = target
            if "configMap" in v or "secret" in v:
                src_ref = v.get("configMap") or v.get("secret") or {}
                kind = "configMapRef" if "configMap" in v else "secretRef"
                ref_name = str(src_ref.get("name") or src_ref.get("secretName"))
                self._files(target, self.volume_data(kind, ns, ref_name), src_ref.get("items"))
            elif "downwardAPI" in v:
                self._downward_files(pod, target, v["downwardAPI"].get("items") or [])
            elif "projected" in v:
                for source in v["projected"].get("sources") or []:
                    if "configMap" in source or "secret" in source:
                        ref = source.get("configMap") or source.get("secret") or {}
                        kind = "configMapRef" if "configMap" in source else "secretRef"
                        self._files(target, self.volume_data(kind, ns, ref["name"]), ref.get("items"))
                    elif "downwardAPI" in source:
                        self._downward_files(pod, target, source["downwardAPI"].get("items") or [])
                    elif "serviceAccountToken" in source:
                        token = source["serviceAccountToken"]
                        self._token_file(pod, target / token["path"], token.get("audience"))
        return out

    def _downward_files(self, pod: dict[str, Any], target: Path, items: list[dict[str, Any]]) -> None:
        for item in items:
            if "fieldRef" in item:
                (target / item["path"]).write_text(podspec.field_value(pod, item["fieldRef"]["fieldPath"]))

    def _token_file(self, pod: dict[str, Any], path: Path, audience: str | None = None) -> None:
        sa = pod["spec"].get("serviceAccountName") or "default"
        audiences = [audience] if audience else None  # None: the API server's own, as the kubelet does
        body = {"spec": {"audiences": audiences, "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}}}  # fmt: skip
        try:
            token = self.core.create_namespaced_service_account_token(sa, pod["metadata"]["namespace"], body)
            path.write_text(token.status.token)
        except ApiException as e:
            log.warning("no service-account token for %s: %s", pod["metadata"]["name"], e.reason)

    # ---- process launch -----------------------------------------------------------------------
    def _mountpoint(self, path: Path, is_dir: bool) -> None:
        with self.mountpoints_lock:
            if path.exists() or path.is_symlink():
                return
            top = path
            while not top.parent.exists():
                top = top.parent
            if is_dir:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            self.created_mountpoints.append(top)
            self.mountpoints_file.write_text(json.dumps([str(p) for p in self.created_mountpoints]))

    def isolated_argv(
        self,
        argv: list[str],
        mounts: list[tuple[Path, str, bool]],
        host: str,
        workdir: str,
        netns: str | None = None,
    ) -> list[str]:
        """``argv`` wrapped to run in a private mount + UTS namespace with the pod's mounts, inside the
        pod's network namespace ``netns`` (a path) when it has one.

        Every source is opened (a file descriptor) before the first mount is made, and each mount
        binds ``/proc/self/fd/N``: a mount can then never hide a later mount's source (an emptyDir at
        ``/tmp`` hides nothing of the state directory under ``/tmp``). Destinations are mounted
        parents first, so ``/data`` never covers ``/data/sub``.
        """
        lines = ["set -e", f"hostname {shlex.quote(host)}"]
        mounts = [
            *mounts,
            (self.hosts.path, "/etc/hosts", False),
            (self.resolv_conf, "/etc/resolv.conf", True),
        ]
        hidden = [p for p in self.keep_visible if any(Path(dst) in p.parents for _, dst, _ in mounts)]
        mounts += [(p, str(p), False) for p in hidden]  # bound back on top, from the host's copy
        ordered = sorted(mounts, key=lambda m: len(m[1]))
        fds = [10 + i for i in range(len(ordered))]
        for fd, (src, dst, _) in zip(fds, ordered, strict=True):
            self._mountpoint(Path(dst), src.is_dir())
            lines.append(f"exec {fd}<{shlex.quote(str(src))}")
        for fd, (src, dst, ro) in zip(fds, ordered, strict=True):
            if src in hidden:  # its mount point is now inside a volume: make it there
                lines.append(f"mkdir -p {shlex.quote(dst)}")
            lines.append(f"mount --no-canonicalize --bind /proc/self/fd/{fd} {shlex.quote(dst)}")
            if ro:
                lines.append(f"mount -o remount,bind,ro {shlex.quote(dst)}")
        if fds:
            lines.append("exec " + " ".join(f"{fd}<&-" for fd in fds))
        lines.append(f"mkdir -p {shlex.quote(workdir)} && cd {shlex.quote(workdir)}")
        lines.append('exec "$@"')
        script = "\n".join(lines)
        enter = ["nsenter", f"--net={netns}"] if netns else []
        return [
            *enter,
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
            self.shell,
            "-c",
            script,
            "sh",
            *argv,
        ]

    # ---- reconcile ----------------------------------------------------------------------------
    def _allocate_network(self) -> podnet.PodNetwork:
        if self.bridge is not None:
            return self.bridge.attach()
        n = self.next_ip
        self.next_ip += 1
        return podnet.PodNetwork(f"127.{self.net}.{n // 250}.{n % 250 + 2}")

    def release(self, network: podnet.PodNetwork) -> None:
        if self.bridge is not None:
            self.bridge.detach(network)

    def sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node_name}")
        seen = set()
        for obj in pods.items:
            pod = self.api.sanitize_for_serialization(obj)
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            run = self.runs.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
                if run:
                    run.kill(min(grace, 10.0))
                    self.runs.pop(uid, None)
                with contextlib.suppress(ApiException):
                    self.core.delete_namespaced_pod(
                        pod["metadata"]["name"], pod["metadata"]["namespace"], grace_period_seconds=0,
                        body=client.V1DeleteOptions(grace_period_seconds=0, preconditions={"uid": uid}),
                    )  # fmt: skip
                continue
            phase = (pod.get("status") or {}).get("phase", "Pending")
            if run is None and phase == "Pending" and not (pod.get("status") or {}).get("podIP"):
                run = PodRun(self, pod, self._allocate_network())
                self.runs[uid] = run
                run.start()
        for uid in set(self.runs) - seen:
            self.runs.pop(uid).kill(2.0)
        for uid, run in list(self.runs.items()):
            if not run.is_alive():
                self.runs.pop(uid)

    def shutdown(self) -> None:
        for run in list(self.runs.values()):
            run.kill(2.0)
        self.runs.clear()
        for top in reversed(self.created_mountpoints):
            with contextlib.suppress(OSError):
                if top.is_dir():
                    # only empty directories we created: never remove content
                    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                        d.rmdir()
                    top.rmdir()
                elif top.stat().st_size == 0:
                    top.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.mountpoints_file.unlink()
        if self.bridge is not None:
            self.bridge.close()

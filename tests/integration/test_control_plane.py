"""Smoke tests of the local control plane itself: real apiserver, controllers, scheduler, KWOK nodes,
the local node and the PV provisioner. No mock of the Kubernetes API anywhere."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conveyor.devcluster import kwok
from conveyor.devcluster.cluster import LOCAL_NODE
from conveyor.devcluster.node import LOCAL_NODE_LABEL
from conveyor.devcluster.processes import free_port
from conveyor.devcluster.pytest_plugin import wait_for

pytestmark = pytest.mark.cluster


def job_condition(batch: Any, name: str, ns: str, kind: str) -> Any:
    job = batch.read_namespaced_job_status(name, ns)
    return next((c for c in job.status.conditions or [] if c.type == kind and c.status == "True"), None)


def job(name: str, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
            **spec,
        },
    }


def test_crd_with_cel_rule_rejects_bad_object(k8s_api: Any, namespace: str) -> None:
    ext: Any = client.ApiextensionsV1Api(k8s_api)
    custom: Any = client.CustomObjectsApi(k8s_api)
    plural = f"widgets{uuid.uuid4().hex[:6]}"
    group = "test.conveyor.dev"
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                "x-kubernetes-validations": [
                    {"rule": "self.min <= self.max", "message": "min must not exceed max"}
                ],
            }
        },
    }
    ext.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": plural[:-1], "kind": f"W{plural[1:-1]}"},
                "versions": [
                    {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
                ],
            },
        }
    )
    try:

        def established() -> bool:
            crd = ext.read_custom_resource_definition(f"{plural}.{group}")
            return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

        wait_for(established, 30, "CRD Established")
        kind = f"W{plural[1:-1]}"

        def obj(name: str, lo: int, hi: int) -> dict[str, Any]:
            return {
                "apiVersion": f"{group}/v1",
                "kind": kind,
                "metadata": {"name": name},
                "spec": {"min": lo, "max": hi},
            }

        wait_for(
            lambda: custom.create_namespaced_custom_object(group, "v1", namespace, plural, obj("ok", 1, 2)),
            30,
        )
        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object(group, "v1", namespace, plural, obj("bad", 3, 2))
        assert err.value.status == 422
        assert "min must not exceed max" in err.value.body
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{group}")


def test_job_runs_on_gpu_node_and_completes(k8s_api: Any, namespace: str) -> None:
    batch: Any = client.BatchV1Api(k8s_api)
    core: Any = client.CoreV1Api(k8s_api)
    spec = job("train", {kwok.TERMINATION_MESSAGE: '{"accuracy": 0.9}'})
    spec["spec"]["template"]["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    batch.create_namespaced_job(namespace, spec)
    wait_for(lambda: job_condition(batch, "train", namespace, "Complete"), 60, "Job Complete")
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=train").items
    assert pod.spec.node_name.startswith("gpu-node-")
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.message == '{"accuracy": 0.9}'


def test_failing_pod_honours_pod_failure_policy(k8s_api: Any, namespace: str) -> None:
    batch: Any = client.BatchV1Api(k8s_api)
    core: Any = client.CoreV1Api(k8s_api)
    policy = {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}},
        ]
    }
    fatal = job("fatal", {kwok.EXIT_CODE: "42", kwok.TERMINATION_MESSAGE: "bad config"}, backoffLimit=5)
    fatal["spec"]["podFailurePolicy"] = policy
    counted = job("counted", {kwok.EXIT_CODE: "3", kwok.DELAY: "100ms"}, backoffLimit=1)
    counted["spec"]["podFailurePolicy"] = policy
    batch.create_namespaced_job(namespace, fatal)
    batch.create_namespaced_job(namespace, counted)

    failed = wait_for(lambda: job_condition(batch, "fatal", namespace, "Failed"), 60, "Job fatal Failed")
    assert failed.reason == "PodFailurePolicy"
    assert batch.read_namespaced_job_status("fatal", namespace).status.failed == 1  # no retry
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=fatal").items
    term = pod.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.message) == (42, "bad config")

    failed = wait_for(lambda: job_condition(batch, "counted", namespace, "Failed"), 90, "Job counted Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert batch.read_namespaced_job_status("counted", namespace).status.failed == 2  # retried once


def test_deployment_becomes_available(k8s_api: Any, namespace: str) -> None:
    apps: Any = client.AppsV1Api(k8s_api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {**kwok.SIMULATED, "containers": [{"name": "web", "image": "nginx"}]},
                },
            },
        },
    )
    wait_for(
        lambda: (
            (apps.read_namespaced_deployment_status("web", namespace).status.available_replicas or 0) == 2
        ),
        60,
        "2 available replicas",
    )


def test_deleting_owner_garbage_collects_dependents(k8s_api: Any, namespace: str) -> None:
    core: Any = client.CoreV1Api(k8s_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    for i in range(2):
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": f"dep-{i}", "ownerReferences": [ref]}}
        )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")
    wait_for(
        lambda: (
            not [
                c
                for c in core.list_namespaced_config_map(namespace).items
                if c.metadata.name.startswith("dep-")
            ]
        ),
        60,
        "dependents garbage-collected",
    )


def test_restricted_namespace_rejects_privileged_pod(k8s_api: Any) -> None:
    core: Any = client.CoreV1Api(k8s_api)
    ns = f"restricted-{uuid.uuid4().hex[:5]}"
    core.create_namespace(
        {"metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    try:
        pod = {
            "metadata": {"name": "priv"},
            "spec": {
                "containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]
            },
        }
        with pytest.raises(ApiException) as err:
            core.create_namespaced_pod(ns, pod)
        assert err.value.status == 403
        assert "violates PodSecurity" in err.value.body
    finally:
        core.delete_namespace(ns)


def test_narrow_role_is_forbidden_outside_it(devcluster: Any, k8s_api: Any, namespace: str) -> None:
    core: Any = client.CoreV1Api(k8s_api)
    rbac: Any = client.RbacAuthorizationV1Api(k8s_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    token = core.create_namespaced_service_account_token("reader", namespace, {"spec": {}}).status.token
    conf = client.Configuration()
    conf.host = devcluster.api_url
    conf.ssl_ca_cert = str(devcluster.state_dir / "pki" / "ca.crt")
    conf.api_key = {"authorization": f"Bearer {token}"}
    as_reader: Any = client.CoreV1Api(client.ApiClient(conf))
    wait_for(lambda: as_reader.list_namespaced_pod(namespace) is not None, 30, "RoleBinding in effect")
    for forbidden in (
        lambda: as_reader.list_namespaced_secret(namespace),
        lambda: as_reader.list_namespaced_pod("default"),
    ):
        with pytest.raises(ApiException) as err:
            forbidden()
        assert err.value.status == 403


def test_helm_install_and_uninstall(
    helm: str, kubeconfig: Path, k8s_api: Any, namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: smoke\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n"
    )
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: ConfigMap
            metadata:
              name: {{ .Release.Name }}-greeting
            data:
              greeting: {{ .Values.greeting | quote }}
              kube: {{ .Capabilities.KubeVersion.Version | quote }}
            """
        )
    )
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "KUBECONFIG": str(kubeconfig),
    }
    args = ["--namespace", namespace]
    subprocess.run(
        [helm, "install", "smoke", str(chart), "--wait", "--timeout", "60s", *args], env=env, check=True
    )
    core: Any = client.CoreV1Api(k8s_api)
    cm = core.read_namespaced_config_map("smoke-greeting", namespace)
    assert cm.data["greeting"] == "hello"
    assert cm.data["kube"].startswith("v1.")
    subprocess.run([helm, "uninstall", "smoke", "--wait", *args], env=env, check=True)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("smoke-greeting", namespace)
    assert err.value.status == 404


def test_kubectl_reports_versions(kubectl: str, kubeconfig: Path) -> None:
    out = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "version", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    versions = json.loads(out.stdout)
    assert versions["clientVersion"]["gitVersion"] == versions["serverVersion"]["gitVersion"]
    assert versions["serverVersion"]["gitVersion"].startswith("v1.3")


def test_scheduler_leaves_oversized_pod_pending(k8s_api: Any, namespace: str) -> None:
    core: Any = client.CoreV1Api(k8s_api)
    pod = {
        "metadata": {"name": "greedy"},
        "spec": {
            "containers": [
                {"name": "c", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "9"}}}
            ]
        },
    }
    core.create_namespaced_pod(namespace, pod)

    def failed_scheduling() -> Any:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=greedy").items
        return next((e for e in events if e.reason == "FailedScheduling"), None)

    event = wait_for(failed_scheduling, 60, "FailedScheduling event")
    assert "nvidia.com/gpu" in event.message
    assert core.read_namespaced_pod("greedy", namespace).status.phase == "Pending"


# ---- the local node: pods really run ------------------------------------------------------------

LOCAL = {"nodeSelector": {LOCAL_NODE_LABEL: "true"}}

SERVER = """
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(os.environ["POD_NAME"].encode())
http.server.HTTPServer((os.environ["POD_IP"], int(sys.argv[1])), H).serve_forever()
"""

CLIENT = """
import json, os, socket, sys, time, urllib.request
peer = f"srv.peers.{os.environ['NS']}.svc.cluster.local"
for _ in range(100):
    try:
        body = urllib.request.urlopen(f"http://{peer}:{sys.argv[1]}/", timeout=2).read().decode()
        break
    except OSError:
        time.sleep(0.2)
with open("/data/shared/out.txt", "w") as f:
    f.write("written by " + os.environ["POD_NAME"])
report = {k: os.environ.get(k) for k in ("POD_NAME", "NS", "POD_IP", "NOTE", "GREETING", "NODE")}
report.update(peer_ip=socket.gethostbyname(peer), peer_said=body)
report.update(hostname=socket.gethostname(), cwd=os.getcwd())
open("/dev/termination-log", "w").write(json.dumps(report))
"""


def local_pod(name: str, code: str, *args: str, **spec: Any) -> dict[str, Any]:
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {
            "name": "NOTE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['conveyor.dev/note']"}},
        },
        {"name": "WHO", "value": "world"},
        {"name": "GREETING", "value": "hello $(WHO)"},
    ]
    container = {
        "name": "main",
        "image": "ignored-on-the-local-node",
        "command": ["python", "-c", code],
        "args": list(args),
        "env": env,
        "workingDir": "/data",
        "volumeMounts": [{"name": "data", "mountPath": "/data/shared"}],
    }
    return {
        "metadata": {
            "name": name,
            "labels": {"app": name},
            "annotations": {"conveyor.dev/note": "from-annotation"},
        },
        "spec": {
            **LOCAL,
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}],
            **spec,
        },
    }


def test_local_node_runs_pods_with_dns_env_and_shared_pvc(k8s_api: Any, namespace: str) -> None:
    core: Any = client.CoreV1Api(k8s_api)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "shared"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "peers"},
            "spec": {"clusterIP": "None", "selector": {"app": "srv"}, "ports": [{"port": 80}]},
        },
    )
    port = str(free_port())
    server = local_pod("srv", SERVER, port, hostname="srv", subdomain="peers", restartPolicy="Always")
    core.create_namespaced_pod(namespace, server)
    core.create_namespaced_pod(namespace, local_pod("client", CLIENT, port))

    def phase(name: str) -> str:
        return str(core.read_namespaced_pod(name, namespace).status.phase)

    wait_for(lambda: phase("client") in ("Succeeded", "Failed"), 90, "client pod finished")
    client_pod = core.read_namespaced_pod("client", namespace)
    term = client_pod.status.container_statuses[0].state.terminated
    assert client_pod.status.phase == "Succeeded", term
    assert client_pod.spec.node_name == LOCAL_NODE
    report = json.loads(term.message)
    srv = core.read_namespaced_pod("srv", namespace)
    assert report["POD_NAME"] == "client" and report["NS"] == namespace and report["NODE"] == LOCAL_NODE
    assert report["POD_IP"] == client_pod.status.pod_ip != srv.status.pod_ip
    assert report["NOTE"] == "from-annotation" and report["GREETING"] == "hello world"
    assert report["peer_ip"] == srv.status.pod_ip and report["peer_said"] == "srv"
    assert report["hostname"] == "client" and report["cwd"] == "/data"

    reader = "import sys; open('/dev/termination-log', 'w').write(open('/data/shared/out.txt').read())"
    core.create_namespaced_pod(namespace, local_pod("reader", reader))
    wait_for(lambda: phase("reader") == "Succeeded", 60, "reader Succeeded")
    term = core.read_namespaced_pod("reader", namespace).status.container_statuses[0].state.terminated
    assert term.message == "written by client"

    # Deleting the server pod kills its process: the port stops answering.
    core.delete_namespaced_pod("srv", namespace, grace_period_seconds=1)
    wait_for(lambda: not any(p.metadata.name == "srv" for p in core.list_namespaced_pod(namespace).items), 30)
    with pytest.raises(OSError), socket.create_connection((srv.status.pod_ip, int(port)), timeout=1):
        pass


def test_local_pod_failure_reports_exit_code_and_message(
    devcluster: Any, k8s_api: Any, namespace: str, kubectl: str, kubeconfig: Path
) -> None:
    core: Any = client.CoreV1Api(k8s_api)
    code = "print('to stdout'); open('/dev/termination-log', 'w').write('boom: bad input'); exit(7)"
    pod = local_pod("fails", code)
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: core.read_namespaced_pod("fails", namespace).status.phase == "Failed", 60, "pod Failed")
    term = core.read_namespaced_pod("fails", namespace).status.container_statuses[0].state.terminated
    assert (term.exit_code, term.message) == (7, "boom: bad input")
    assert "to stdout" in devcluster.local_pod_log(namespace, "fails", "main")
    logs = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "-n", namespace, "logs", "fails"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert logs.stdout == "to stdout\n"


WORKER = """
import os, socket, time
index = os.environ["JOB_COMPLETION_INDEX"]
rank0 = f"indexed-0.workers.{os.environ['NS']}.svc.cluster.local"
for _ in range(100):
    try:
        addr = socket.gethostbyname(rank0)
        break
    except OSError:
        time.sleep(0.1)
with open(f"/data/shared/rank-{index}", "w") as f:
    f.write(f"{socket.gethostname()} {addr}")
for _ in range(600):  # rank 0 stays until rank 1 found it (a finished pod leaves the hosts file)
    if os.path.exists("/data/shared/rank-1"):
        break
    time.sleep(0.1)
"""


def indexed_job(name: str, template: dict[str, Any]) -> dict[str, Any]:
    """The distributed-training shape: an Indexed Job of 2 pods, failing at the first failure."""
    spec = {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {**spec, "template": template},
    }


def test_local_indexed_job_ranks_find_rank0(k8s_api: Any, namespace: str) -> None:
    """The distributed-training shape: an Indexed Job + headless Service, all on the local node."""
    core: Any = client.CoreV1Api(k8s_api)
    batch: Any = client.BatchV1Api(k8s_api)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "shared"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "workers"}, "spec": {"clusterIP": "None", "selector": {"job-name": "indexed"}}},
    )
    template = local_pod("unused", WORKER)
    template["spec"]["subdomain"] = "workers"
    template["metadata"] = {"annotations": {"conveyor.dev/note": "x"}}
    batch.create_namespaced_job(namespace, indexed_job("indexed", template))
    wait_for(lambda: job_condition(batch, "indexed", namespace, "Complete"), 240, "Indexed Job Complete")
    pvc = core.read_namespaced_persistent_volume_claim("shared", namespace)
    root = Path(core.read_persistent_volume(pvc.spec.volume_name).spec.host_path.path)
    pods = {
        p.metadata.name: p
        for p in core.list_namespaced_pod(namespace, label_selector="job-name=indexed").items
    }
    rank0_ip = next(p.status.pod_ip for p in pods.values() if p.spec.hostname == "indexed-0")
    assert (root / "rank-0").read_text() == f"indexed-0 {rank0_ip}"
    assert (root / "rank-1").read_text() == f"indexed-1 {rank0_ip}"


SHADOWS = """
import json, os
open("/tmp/scratch", "w").write("private")
open("/artifacts/out.txt", "w").write("via the claim")
open("/cache/out.txt", "w").write("via hostPath")
report = {"tmp": sorted(os.listdir("/tmp")), "hosts": "conveyor local-node pods" in open("/etc/hosts").read()}
open("/dev/termination-log", "w").write(json.dumps(report))
"""


def test_local_pod_with_tmp_emptydir_still_mounts_sources_under_tmp(
    devcluster: Any, k8s_api: Any, namespace: str
) -> None:
    """An emptyDir at /tmp must not hide the other volumes' sources, which live in the test bed's
    state directory (itself under /tmp): the claim's PV directory, a hostPath (DirectoryOrCreate,
    created by the kubelet), the termination-message file and the cluster hosts file."""
    core: Any = client.CoreV1Api(k8s_api)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "shared"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    cache = Path(devcluster.state_dir) / "host-cache" / uuid.uuid4().hex[:8] / "made-by-kubelet"
    pod = local_pod("shadows", SHADOWS)
    container = pod["spec"]["containers"][0]
    container["workingDir"] = "/tmp"
    container["volumeMounts"] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "data", "mountPath": "/artifacts"},
        {"name": "cache", "mountPath": "/cache"},
    ]
    pod["spec"]["volumes"] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}},
        {"name": "cache", "hostPath": {"path": str(cache), "type": "DirectoryOrCreate"}},
    ]
    core.create_namespaced_pod(namespace, pod)

    def done() -> Any:
        p = core.read_namespaced_pod("shadows", namespace)
        return p if p.status.phase in ("Succeeded", "Failed") else None

    finished = wait_for(done, 90, "pod finished")
    term = finished.status.container_statuses[0].state.terminated
    assert finished.status.phase == "Succeeded", (term, finished.status.message)
    report = json.loads(term.message)
    # The pod's own /tmp: what it wrote, plus the path down to this checkout when the checkout itself
    # lives under /tmp (the node keeps the pod's python and sources visible through the emptyDir).
    checkout = Path(__file__).resolve().parents[2]
    under_tmp = {checkout.relative_to("/tmp").parts[0]} if checkout.is_relative_to("/tmp") else set()
    assert "scratch" in report["tmp"] and set(report["tmp"]) <= {"scratch", *under_tmp}
    assert report["hosts"]  # the cluster hosts file, from the state directory under /tmp
    pvc = core.read_namespaced_persistent_volume_claim("shared", namespace)
    root = Path(core.read_persistent_volume(pvc.spec.volume_name).spec.host_path.path)
    assert (root / "out.txt").read_text() == "via the claim"
    assert (cache / "out.txt").read_text() == "via hostPath"
    assert not Path("/tmp/scratch").exists()


# ---- default placement and per-pod networks ------------------------------------------------------


def test_cpu_pods_land_on_the_local_node_and_gpu_pods_on_the_gpu_nodes(k8s_api: Any, namespace: str) -> None:
    """As on a real cluster with tainted GPU nodes: no nodeSelector, no toleration in either pod; the API
    server's ExtendedResourceToleration admission adds the GPU toleration to the pod asking for one."""
    core: Any = client.CoreV1Api(k8s_api)
    cpu = {"name": "c", "image": "x", "command": ["python", "-c", "pass"]}
    gpu = {"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    for name, container in (("cpu", cpu), ("gpu", gpu)):
        core.create_namespaced_pod(
            namespace,
            {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container]}},
        )

    def node_of(name: str) -> str | None:
        return core.read_namespaced_pod(name, namespace).spec.node_name

    assert wait_for(lambda: node_of("cpu"), 30, "cpu pod scheduled") == LOCAL_NODE
    assert wait_for(lambda: node_of("gpu"), 30, "gpu pod scheduled").startswith("gpu-node-")
    tolerations = core.read_namespaced_pod("gpu", namespace).spec.tolerations
    assert any(t.key == "nvidia.com/gpu" and t.operator == "Exists" for t in tolerations)
    wait_for(
        lambda: core.read_namespaced_pod("cpu", namespace).status.phase == "Succeeded", 60, "cpu pod ran"
    )


RENDEZVOUS = """
import os, socket, time
index, job = os.environ["JOB_COMPLETION_INDEX"], os.environ["JOB"]
if index == "0":  # rank 0 holds the rendezvous port on every interface, like torchrun's TCPStore
    server = socket.create_server(("0.0.0.0", 29500))
    conn, _ = server.accept()
    conn.sendall(job.encode())
    conn.recv(1)  # stay until rank 1 has read the answer
    time.sleep(1)  # and a little longer, as torchelastic's exit barrier does
else:
    peer = f"{job}-0.{job}.{os.environ['NS']}.svc.cluster.local"
    for _ in range(200):
        try:
            conn = socket.create_connection((peer, 29500), timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    heard = conn.recv(100).decode()
    conn.sendall(b"k")
    open("/dev/termination-log", "w").write(heard)
"""


def test_concurrent_two_worker_jobs_each_own_port_29500(k8s_api: Any, namespace: str) -> None:
    """Two 2-worker jobs at once on the local node, each rank 0 binding 0.0.0.0:29500: every pod has
    its own network namespace and address, so nothing collides and each rank 1 reaches its own rank 0."""
    core: Any = client.CoreV1Api(k8s_api)
    batch: Any = client.BatchV1Api(k8s_api)
    for name in ("ring-a", "ring-b"):
        core.create_namespaced_service(
            namespace,
            {"metadata": {"name": name}, "spec": {"clusterIP": "None", "selector": {"job-name": name}}},
        )
        env = [
            {"name": "JOB", "value": name},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ]
        container = {"name": "main", "image": "x", "command": ["python", "-c", RENDEZVOUS], "env": env}
        template = {"spec": {"restartPolicy": "Never", "subdomain": name, "containers": [container]}}
        batch.create_namespaced_job(namespace, indexed_job(name, template))
    for name in ("ring-a", "ring-b"):
        wait_for(
            lambda n=name: (
                job_condition(batch, n, namespace, "Complete") or job_condition(batch, n, namespace, "Failed")
            ),
            120,
            f"Job {name} finished",
        )
        assert job_condition(batch, name, namespace, "Complete"), batch.read_namespaced_job(
            name, namespace
        ).status
    pods = core.list_namespaced_pod(namespace).items
    assert {p.spec.node_name for p in pods} == {LOCAL_NODE}
    assert len({p.status.pod_ip for p in pods}) == 4
    for pod in pods:
        if pod.metadata.annotations["batch.kubernetes.io/job-completion-index"] == "1":
            heard = pod.status.container_statuses[0].state.terminated.message
            assert heard == pod.metadata.labels["job-name"]


SERVE_ANY = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(os.environ["POD_NAME"].encode())
http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


def test_replicas_serve_the_same_port_and_the_test_process_reaches_each(k8s_api: Any, namespace: str) -> None:
    core: Any = client.CoreV1Api(k8s_api)
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    for name in ("replica-a", "replica-b"):
        container = {"name": "s", "image": "x", "command": ["python", "-c", SERVE_ANY], "env": env}
        core.create_namespaced_pod(
            namespace, {"metadata": {"name": name}, "spec": {"containers": [container]}}
        )

    def answer(name: str) -> str | None:
        ip = core.read_namespaced_pod(name, namespace).status.pod_ip
        with socket.create_connection((ip, 8080), timeout=2) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b"".join(iter(lambda: conn.recv(4096), b""))  # until the server closes
        return reply.decode().rsplit("\r\n", 1)[-1] or None

    for name in ("replica-a", "replica-b"):
        assert wait_for(lambda n=name: answer(n), 60, f"{name} answering on 8080") == name

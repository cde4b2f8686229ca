"""Table tests for the pure Kubernetes manifest builders (conveyor.operator.kubernetes.builders)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conveyor.operator.api.resource import load_manifest
from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.engine import workload_for
from conveyor.operator.engine.observations import Observations
from conveyor.operator.engine.pipeline import reconcile
from conveyor.operator.kubernetes import builders as b
from conveyor.operator.workloads import (
    EXIT_INVALID_INPUT,
    RESERVED_ENV,
    TRAINER_PROCESS_ENV,
    Workload,
    default_env,
)
from conveyor.trainer.config import AutoscalingSpec, ServingSpec

REFERENCE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "digits.yaml"


def spec_from(overrides: dict[str, Any] | None = None) -> TrainingPipelineSpec:
    base: dict[str, Any] = {
        "task": {"type": "classification", "objective": {"metric": "accuracy", "goal": "maximize"}},
        "resources": {"workers": 2, "cpu": "1", "memory": "2Gi"},
        "storage": {"uri": "pvc://conveyor-artifacts"},
    }
    for key, value in (overrides or {}).items():
        base[key] = value
    return TrainingPipelineSpec.model_validate(base)


def owner(overrides: dict[str, Any] | None = None, name: str = "digits") -> b.Owner:
    return b.Owner(name, "ml", "uid-1", spec_from(overrides))


def trial(workers: int = 2, gpu: int = 0, attempt: int = 0, procs: int = 1) -> Workload:
    return Workload(
        "trial-0003",
        "tune",
        "train",
        "trials/trial-0003",
        attempt=attempt,
        config={"a": 1},
        trial=3,
        distributed=True,
        workers=workers,
        processes_per_worker=procs,
        gpu=gpu,
    )


PREPARE = Workload("prepare", "prepare", "prepare", "data", config={"a": 1})
CA = "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"
SETTINGS = b.Settings(
    image="reg/conveyor-trainer:1", progress_url="https://conveyor-progress.sys.svc:8081", progress_ca=CA
)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_reference_pipeline_trial_job_and_service() -> None:
    (pipeline,) = load_manifest(REFERENCE)
    decision = reconcile(pipeline.spec, None, Observations(), now=datetime(2026, 1, 1))
    assert decision.status.workloads or decision.status.trials
    work = workload_for(pipeline.spec, decision.status, "prepare", 0)
    objects = b.workload_objects(b.Owner("digits", "ml", "u", pipeline.spec), SETTINGS, work)
    assert [o["kind"] for o in objects] == ["Job"]


@pytest.mark.parametrize(
    ("workload", "kinds", "indexed", "completions"),
    [
        (trial(workers=2), ["Service", "Job"], True, 2),
        (trial(workers=4), ["Service", "Job"], True, 4),
        (trial(workers=1), ["Service", "Job"], True, 1),
        (PREPARE, ["Job"], False, 1),
    ],
)
def test_workload_objects_shape(
    workload: Workload, kinds: list[str], indexed: bool, completions: int
) -> None:
    objects = b.workload_objects(owner(), SETTINGS, workload)
    assert [o["kind"] for o in objects] == kinds
    job = objects[-1]
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == completions
    assert (job["spec"].get("completionMode") == "Indexed") is indexed
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    if indexed:
        service = objects[0]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]
        assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize(
    ("workers", "procs", "gpu", "nnodes", "nproc", "world"),
    [(2, 1, 0, "2", "1", "2"), (4, 8, 8, "4", "8", "32"), (1, 2, 2, "1", "2", "2")],
)
def test_torchrun_env_contract(
    workers: int, procs: int, gpu: int, nnodes: str, nproc: str, world: str
) -> None:
    job = b.workload_job(owner(), SETTINGS, trial(workers, gpu, procs=procs))
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    master = f"{job['metadata']['name']}-0.{job['metadata']['name']}"
    assert env["PET_NNODES"] == nnodes
    assert env["PET_NPROC_PER_NODE"] == nproc
    assert env["WORLD_SIZE"] == world
    assert env["PET_MASTER_ADDR"] == env["MASTER_ADDR"] == master
    assert env["PET_MASTER_PORT"] == env["MASTER_PORT"] == "29500"
    assert env["PET_NODE_RANK"] == {"fieldRef": {"fieldPath": b.COMPLETION_INDEX}}
    assert container["env"][0]["name"] == "PET_NODE_RANK"  # defined before anything refers to it
    args = container["args"]
    if procs == 1:  # the trainer is the pod's one process: rank = completion index, no agent
        assert args[:3] == ["-m", "conveyor.trainer", "train"] and "torch.distributed.run" not in args
        assert env["RANK"] == env["PET_NODE_RANK"]
        assert (env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("0", "1")
    else:
        assert args[args.index("--node-rank") + 1] == "$(PET_NODE_RANK)"
        assert args[args.index("--nproc-per-node") + 1] == nproc
        assert args[args.index("--master-addr") + 1] == master
        assert "torch.distributed.run" in args and "RANK" not in env
    assert any(a.startswith("/artifacts/digits/") for a in args)
    assert env["CONVEYOR_WORKLOAD"] == "trial-0003"
    limits = container["resources"]["limits"]
    if gpu:
        assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"] == str(gpu)
    else:
        assert "nvidia.com/gpu" not in limits


def test_pod_is_restricted_and_has_no_api_token() -> None:
    for workload in (trial(), PREPARE):
        pod = b.workload_job(owner(), SETTINGS, workload)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["readOnlyRootFilesystem"] is True  # writes go to /tmp and the artifacts volume
        assert container["terminationMessagePolicy"] == "File"
        token = next(v for v in pod["volumes"] if v["name"] == "conveyor-token")
        assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "conveyor.dev"
        assert env_of(container)["CONVEYOR_PROGRESS_URL"] == SETTINGS.progress_url


def test_pods_verify_the_progress_endpoint_against_the_ca_projected_from_their_annotation() -> None:
    """The CA (public) rides on the pod template and the kubelet writes it next to the token: a pod
    cannot mount a ConfigMap from the operator's namespace."""
    for template in (
        b.workload_job(owner(), SETTINGS, trial())["spec"]["template"],
        b.serving_objects(owner(), SETTINGS, "/artifacts/m", ServingSpec())[0]["spec"]["template"],
    ):
        assert template["metadata"]["annotations"][b.PROGRESS_CA_ANNOTATION] == CA
        token = next(v for v in template["spec"]["volumes"] if v["name"] == "conveyor-token")
        (projected,) = token["projected"]["sources"][1]["downwardAPI"]["items"]
        assert projected == {
            "path": "ca.crt",
            "fieldRef": {"fieldPath": f"metadata.annotations['{b.PROGRESS_CA_ANNOTATION}']"},
        }
        (container,) = template["spec"]["containers"]
        assert env_of(container)["CONVEYOR_PROGRESS_CA_FILE"] == f"{b.TOKEN_DIR}/ca.crt"
    # plain http (no CA): no CA file, no annotation
    plain = dataclasses.replace(SETTINGS, progress_url="http://p.sys.svc:8081", progress_ca=None)
    template = b.workload_job(owner(), plain, trial())["spec"]["template"]
    assert b.PROGRESS_CA_ANNOTATION not in template["metadata"].get("annotations", {})
    assert "CONVEYOR_PROGRESS_CA_FILE" not in env_of(template["spec"]["containers"][0])
    token = next(v for v in template["spec"]["volumes"] if v["name"] == "conveyor-token")
    assert len(token["projected"]["sources"]) == 1


def test_no_progress_url_means_no_token() -> None:
    pod = b.workload_job(owner(), b.Settings(), PREPARE)["spec"]["template"]["spec"]
    assert all(v["name"] != "conveyor-token" for v in pod["volumes"])
    assert pod["containers"][0]["image"] == b.DEFAULT_IMAGE


def test_pod_failure_policy() -> None:
    rules = b.workload_job(owner(), SETTINGS, trial())["spec"]["podFailurePolicy"]["rules"]
    disruption = [{"type": "DisruptionTarget", "status": "True"}]
    assert rules[0] == {"action": "Ignore", "onPodConditions": disruption}
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"] == {
        "containerName": "trainer",
        "operator": "In",
        "values": [EXIT_INVALID_INPUT],
    }
    assert EXIT_INVALID_INPUT == 2  # what the trainer's entry point and argparse exit with


@pytest.mark.parametrize(
    ("uri", "claim", "sub_path"),
    [
        ("pvc://conveyor-artifacts", "conveyor-artifacts", None),
        ("pvc://shared/teams/a/", "shared", "teams/a"),
        (None, "digits-artifacts", None),  # provisioned by the operator, never a per-pod emptyDir
    ],
)
def test_storage(uri: str | None, claim: str, sub_path: str | None) -> None:
    store = b.storage(owner({"storage": {"uri": uri} if uri else {}}))
    assert store.root == "/artifacts/digits"
    (volume,), (mount,) = store.volumes, store.mounts
    assert mount["name"] == volume["name"] and mount["mountPath"] == "/artifacts"
    assert mount.get("subPath") == sub_path
    assert volume["persistentVolumeClaim"] == {"claimName": claim}


@pytest.mark.parametrize(
    ("changes", "mode"),
    [
        ({"resources": {"workers": 1}, "tuning": None, "ensemble": None, "serving": None}, "ReadWriteOnce"),
        ({"resources": {"workers": 2}, "tuning": None, "ensemble": None, "serving": None}, "ReadWriteMany"),
        (
            {
                "resources": {"workers": 1},
                "tuning": {
                    "trials": 4,
                    "parallelism": 2,
                    "parameters": [{"name": "model.dropout", "type": "float", "min": 0.0, "max": 0.5}],
                },
            },
            "ReadWriteMany",
        ),
    ],
)
def test_artifacts_claim_is_provisioned_only_without_a_uri(changes: dict[str, Any], mode: str) -> None:
    assert b.artifacts_claim(owner({"storage": {"uri": "pvc://mine"}})) is None
    claim = b.artifacts_claim(owner({"storage": {}, **changes}))
    assert claim is not None
    assert claim["kind"] == "PersistentVolumeClaim" and claim["metadata"]["name"] == "digits-artifacts"
    assert claim["metadata"]["ownerReferences"][0]["kind"] == "TrainingPipeline"
    assert claim["spec"]["accessModes"] == [mode]
    assert claim["spec"]["resources"]["requests"]["storage"] == b.PROVISIONED_SIZE


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize(
    ("data", "claim", "secret"),
    [
        ({"source": "pvc://datasets/tables/digits.csv"}, "datasets", None),
        ({"source": "pvc://conveyor-artifacts"}, "conveyor-artifacts", None),  # the artifacts' claim too
        ({"source": "s3://bucket/digits.csv", "credentialsSecret": "s3-reader"}, None, "s3-reader"),
        ({"source": "pvc://datasets/x.csv", "credentialsSecret": "extra"}, "datasets", "extra"),
        ({"source": "builtin://digits"}, None, None),
    ],
)
def test_prepare_pod_gets_its_data_source(
    data: dict[str, Any], claim: str | None, secret: str | None
) -> None:
    pod = pod_of(b.workload_job(owner({"data": data}), SETTINGS, PREPARE))
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    if claim:
        assert volumes["data-source"]["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
        assert mounts["data-source"]["mountPath"] == f"/mnt/pvc/{claim}"
        assert mounts["data-source"]["readOnly"] is True
        # The trainer resolves pvc://CLAIM/PATH to $CONVEYOR_PVC_ROOT/CLAIM/PATH: the mount above.
        assert env_of(container)["CONVEYOR_PVC_ROOT"] == "/mnt/pvc"
        assert mounts["artifacts"]["mountPath"] == "/artifacts"  # storage stays where it was
    else:
        assert "data-source" not in volumes and "CONVEYOR_PVC_ROOT" not in env_of(container)
    if secret:
        assert container["envFrom"] == [{"secretRef": {"name": secret}}]  # not optional: a typo shows
    else:
        assert "envFrom" not in container


def test_only_the_prepare_pod_reads_the_data_source() -> None:
    spec = owner({"data": {"source": "pvc://datasets/x.csv", "credentialsSecret": "s3-reader"}})
    evaluate = Workload("evaluate-model", "evaluate", "evaluate", "evaluation/model", models=("model",))
    for workload in (trial(), evaluate):
        pod = pod_of(b.workload_job(spec, SETTINGS, workload))
        assert all(v["name"] != "data-source" for v in pod["volumes"])
        assert "envFrom" not in pod["containers"][0]
    deployment = b.serving_objects(spec, SETTINGS, "model", ServingSpec())[0]
    assert "envFrom" not in deployment["spec"]["template"]["spec"]["containers"][0]


def test_reserved_env_is_what_the_builders_write() -> None:
    """`spec.env` may set exactly the names Conveyor does not: every name a workload pod gets is the
    user's, a default, or reserved; and nothing is reserved in vain."""
    user = (("HF_HOME", "/cache"), ("OMP_NUM_THREADS", "3"))
    spec = owner({"data": {"source": "pvc://datasets/x.csv"}, "code": {"configMap": "digits-code"}})
    written: set[str] = set()
    for base in (trial(), PREPARE):
        workload = dataclasses.replace(base, env=user)
        (container,) = pod_of(b.workload_job(spec, SETTINGS, workload))["containers"]
        env = env_of(container)
        assert env["HF_HOME"] == "/cache" and env["OMP_NUM_THREADS"] == "3"  # defaults yield to the user
        written |= set(env) - {"HF_HOME"} - set(default_env(workload))
    # The trainer process sets these from its arguments; a code directory is named only locally (pods
    # get the archive and the trainer names its unpacked copy). RANK, LOCAL_RANK and LOCAL_WORLD_SIZE
    # are written for a one-process worker (trial()), torchrun's otherwise.
    process_sets = {*TRAINER_PROCESS_ENV, "CONVEYOR_CODE"}
    assert written == set(RESERVED_ENV) - process_sets


def test_scheduling_pass_through_and_kueue() -> None:
    scheduling = {
        "imagePullPolicy": "IfNotPresent",
        "nodeSelector": {"nvidia.com/gpu.product": "H100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {}},
        "priorityClassName": "high",
        "schedulerName": "volcano",
        "queueName": "team-a",
        "serviceAccountName": "trainer",
        "labels": {"team": "a"},
        "annotations": {"conveyor.dev/sim-exit-code": "0"},
    }
    job = b.workload_job(
        owner({"scheduling": scheduling, "code": {"image": "my/trainer:2"}}), SETTINGS, trial(gpu=1)
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "my/trainer:2"
    assert pod["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert pod["nodeSelector"] == scheduling["nodeSelector"]
    assert pod["tolerations"] == scheduling["tolerations"]
    assert pod["priorityClassName"] == "high" and pod["schedulerName"] == "volcano"
    assert pod["serviceAccountName"] == "trainer"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["team"] == "a"
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"conveyor.dev/sim-exit-code": "0", b.PROGRESS_CA_ANNOTATION: CA}  # and the CA
    plain = b.workload_job(owner(), SETTINGS, trial())
    assert "suspend" not in plain["spec"] and "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]


def test_labels_and_owner_references() -> None:
    job = b.workload_job(owner(), SETTINGS, trial(attempt=2))
    meta = job["metadata"]
    assert meta["name"] == "digits-trial-0003-2"
    assert meta["namespace"] == "ml"
    assert meta["labels"]["conveyor.dev/pipeline"] == "digits"
    assert meta["labels"]["conveyor.dev/workload"] == "trial-0003"
    assert meta["labels"]["conveyor.dev/attempt"] == "2"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "conveyor-operator"
    assert meta["labels"]["app.kubernetes.io/component"] == "tune"
    (ref,) = meta["ownerReferences"]
    assert ref == {
        "apiVersion": "conveyor.dev/v1alpha1",
        "kind": "TrainingPipeline",
        "name": "digits",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


@pytest.mark.parametrize(
    ("parts", "expected_len"),
    [(("digits", "trial-0003-0"), 19), (("x" * 80, "trial-0003-0"), 52), (("9lives", "prepare-0"), 18)],
)
def test_names_fit(parts: tuple[str, str], expected_len: int) -> None:
    name = b.dns_name(*parts, limit=52)
    assert len(name) == expected_len
    assert name[0].isalpha() and name == name.lower()
    assert b.dns_name(*parts, limit=52) == name  # stable


def test_long_pipeline_names_keep_hostnames_short() -> None:
    job = b.workload_job(owner(name="p" * 200), SETTINGS, trial())
    assert len(job["metadata"]["name"]) <= 52
    assert len(job["metadata"]["labels"]["conveyor.dev/pipeline"]) <= 63


@pytest.mark.parametrize(
    ("serving", "kinds", "replicas"),
    [
        (ServingSpec(replicas=2, quantization="int8"), ["Deployment", "Service"], 2),
        (
            ServingSpec(replicas=1, autoscaling=AutoscalingSpec(min_replicas=1, max_replicas=3)),
            ["Deployment", "Service", "HorizontalPodAutoscaler"],
            None,
        ),
    ],
)
def test_serving_objects(serving: ServingSpec, kinds: list[str], replicas: int | None) -> None:
    objects = b.serving_objects(owner(), SETTINGS, "ensemble", serving)
    assert [o["kind"] for o in objects] == kinds
    deployment = objects[0]
    assert deployment["spec"].get("replicas") == replicas
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert "/artifacts/digits/ensemble" in container["args"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert objects[1]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert b.serving_url(owner(), serving) == "http://digits-serve.ml.svc:8080"
    if len(objects) == 3:
        assert objects[2]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


@pytest.mark.parametrize(("uri", "root"), [(None, "pvc://digits-artifacts"), ("pvc://mine/a", None)])
def test_status_names_the_provisioned_claim(uri: str | None, root: str | None) -> None:
    from conveyor.operator.api.status import ArtifactsStatus, PipelineStatus

    spec = spec_from({"storage": {"uri": uri} if uri else {}})
    status = PipelineStatus(artifacts=ArtifactsStatus(root=None, data="data"))
    b.note_provisioned_storage(status, spec, "digits")
    assert status.artifacts is not None and status.artifacts.root == root


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container["volumeMounts"]}


def test_packed_code_reaches_every_pod_read_only() -> None:
    """code.configMap is mounted read-only in every workload pod and the serving pod, named by
    CONVEYOR_CODE_ARCHIVE; the trainer unpacks it into /tmp, the pod's one writable directory."""
    spec = owner(
        {
            "code": {"configMap": "digits-code", "image": "reg/me:3"},
            "tuning": {"parameters": [{"name": "model.dropout", "type": "float", "min": 0.0, "max": 0.5}]},
        }
    )
    pods = [
        pod_of(b.workload_job(spec, SETTINGS, work))
        for work in (
            trial(),
            PREPARE,
            dataclasses.replace(PREPARE, name="evaluate-model", command="evaluate", models=("model",)),
        )
    ]
    serving = b.serving_objects(spec, SETTINGS, "model", ServingSpec())[0]["spec"]["template"]["spec"]
    for pod in [*pods, serving]:
        (container,) = pod["containers"]
        assert container["image"] == "reg/me:3"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["code"] == {"name": "code", "configMap": {"name": "digits-code"}}
        assert _mounts(container)["code"] == {"name": "code", "mountPath": b.CODE_MOUNT, "readOnly": True}
        assert env_of(container)["CONVEYOR_CODE_ARCHIVE"] == f"{b.CODE_MOUNT}/{b.CODE_ARCHIVE_KEY}"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert _mounts(container)["tmp"]["mountPath"] == "/tmp" and volumes["tmp"] == {
            "name": "tmp",
            "emptyDir": {},
        }
    (trainer,) = pods[0]["containers"]
    assert env_of(trainer)["CONVEYOR_PIPELINE"] == "digits"


def test_no_code_no_code_volume() -> None:
    pod = pod_of(b.workload_job(owner(), SETTINGS, trial()))
    (container,) = pod["containers"]
    assert "code" not in {v["name"] for v in pod["volumes"]}
    assert "CONVEYOR_CODE_ARCHIVE" not in env_of(container)
    assert container["image"] == SETTINGS.image


def test_the_user_program_runs_as_one_command_stage_per_pod() -> None:
    """A training.command trial: each Indexed pod runs the trainer's command stage (which starts torchrun
    from the PET_* environment), with the node rank from the completion index."""
    work = dataclasses.replace(
        trial(),
        config={"training": {"command": ["python", "t.py", "--lr", "{{params.lr}}"]}},
        params={"lr": 0.1},
    )
    (container,) = pod_of(b.workload_job(owner(), SETTINGS, work))["containers"]
    argv = [*container["command"], *container["args"]]
    assert argv[1:4] == ["-m", "conveyor.trainer", "command"] and "torch.distributed.run" not in argv
    assert argv[argv.index("--") + 1 :] == ["python", "t.py", "--lr", "0.1"]
    env = env_of(container)
    assert env["PET_NODE_RANK"] == {"fieldRef": {"fieldPath": b.COMPLETION_INDEX}}
    assert env["PET_NNODES"] == "2" and env["CONVEYOR_PARAMS"] == '{"lr":0.1}'

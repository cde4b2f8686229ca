"""`conveyor render -f FILE` as a user runs it: every object the operator would create for the
pipeline, the way the operator builds it, with the chart's defaults for the operator's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.cli import main
from conveyor.commands import render
from conveyor.operator.api.resource import parse
from conveyor.operator.engine import tuning
from conveyor.operator.engine.tuning import max_epochs
from conveyor.operator.kubernetes import builders
from tests.helpers.manifests import REFERENCE, REPO, reference_document

CHART = REPO / "charts" / "conveyor"


def rendered(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert main(["render", *argv]) == 0
    return [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]


def write(tmp_path: Path, document: dict[str, Any]) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def kind_names(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in objects]


def container(obj: dict[str, Any]) -> dict[str, Any]:
    (only,) = obj["spec"]["template"]["spec"]["containers"]
    return only


def test_the_reference_pipeline_renders_every_workload_kind_and_serving(
    capsys: pytest.CaptureFixture[str],
) -> None:
    objects = rendered(capsys, "-f", str(REFERENCE), "-n", "ml")
    assert kind_names(objects) == [
        ("Job", "digits-prepare-0"),
        ("Service", "digits-trial-0000-0"),  # distributed: the headless Service for rank 0 first
        ("Job", "digits-trial-0000-0"),
        ("Service", "digits-train-0"),
        ("Job", "digits-train-0"),
        ("Job", "digits-evaluate-model-0"),
        ("Job", "digits-ensemble-0"),
        ("Job", "digits-evaluate-ensemble-0"),
        ("Deployment", "digits-serve"),
        ("Service", "digits-serve"),
    ]
    assert {o["metadata"]["namespace"] for o in objects} == {"ml"}
    for obj in objects:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == render.PLACEHOLDER_UID
    serving = container(objects[-2])
    assert serving["args"][serving["args"].index("--model") + 1] == "/artifacts/digits/ensemble"


def test_the_trial_runs_the_parameters_the_study_asks_first(capsys: pytest.CaptureFixture[str]) -> None:
    job = rendered(capsys, "-f", str(REFERENCE))[2]
    args = container(job)["args"]
    config = json.loads(args[args.index("--config") + 1])
    spec = parse(reference_document()).spec
    assert spec.tuning is not None
    params, _, _ = tuning.Study(spec.tuning, [], spec.task.maximize, max_epochs(spec)).ask(0)
    assert config["optimizer"]["learningRate"] == params["optimizer.learningRate"]
    assert config["training"]["batchSize"] == params["training.batchSize"]
    assert config["model"]["dropout"] == params["model.dropout"] != spec.model.dropout


def test_the_ensemble_joins_the_first_top_k_trials(capsys: pytest.CaptureFixture[str]) -> None:
    objects = rendered(capsys, "-f", str(REFERENCE))
    job = next(o for o in objects if o["metadata"]["name"] == "digits-ensemble-0")
    args = " ".join(container(job)["args"])
    assert all(f"trials/trial-000{n}" in args for n in range(3)) and "trial-0003" not in args


def test_defaults_are_the_charts_operator_settings(capsys: pytest.CaptureFixture[str]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = f"{values['trainerImage']['repository']}:{values['trainerImage']['tag'] or chart['appVersion']}"
    assert values["progress"]["tls"]["enabled"] is True
    progress = f"https://conveyor-progress.conveyor-system.svc:{values['progress']['port']}"
    for obj in rendered(capsys, "-f", str(REFERENCE)):
        if obj["kind"] in ("Job", "Deployment"):
            assert obj["metadata"]["namespace"] == "default"
            ctr = container(obj)
            assert ctr["image"] == image
            assert ctr["imagePullPolicy"] == values["trainerImage"]["pullPolicy"]
            assert {"name": "CONVEYOR_PROGRESS_URL", "value": progress} in ctr["env"]
            # the CA pods verify the endpoint with: the operator's, a placeholder until it runs
            ca_file = {"name": "CONVEYOR_PROGRESS_CA_FILE", "value": f"{builders.TOKEN_DIR}/ca.crt"}
            assert ca_file in ctr["env"]
            annotations = obj["spec"]["template"]["metadata"]["annotations"]
            assert annotations[builders.PROGRESS_CA_ANNOTATION] == render.PLACEHOLDER_CA


def test_settings_and_namespace_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = reference_document()
    document["metadata"]["namespace"] = "research"
    path = write(tmp_path, document)
    image = "registry.local/trainer@sha256:abc"
    objects = rendered(capsys, "-f", path, "--image", image, "--progress-url", "")
    job = objects[0]
    assert job["metadata"]["namespace"] == "research"
    assert container(job)["image"] == image
    assert all(v["name"] != "conveyor-token" for v in job["spec"]["template"]["spec"]["volumes"])
    assert all(o["metadata"]["namespace"] == "ml" for o in rendered(capsys, "-f", path, "-n", "ml"))


def test_a_pipeline_without_tuning_ensemble_or_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = reference_document()
    for section in ("tuning", "ensemble", "serving"):
        del document["spec"][section]
    objects = rendered(capsys, "-f", write(tmp_path, document))
    assert kind_names(objects) == [
        ("Job", "digits-prepare-0"),
        ("Service", "digits-train-0"),
        ("Job", "digits-train-0"),
        ("Job", "digits-evaluate-model-0"),
    ]


def test_without_storage_uri_the_provisioned_claim_comes_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = reference_document()
    del document["spec"]["storage"]
    claim, prepare, *_ = rendered(capsys, "-f", write(tmp_path, document))
    assert claim["kind"] == "PersistentVolumeClaim"
    volumes = prepare["spec"]["template"]["spec"]["volumes"]
    artifacts = next(v for v in volumes if v["name"] == "artifacts")
    assert artifacts["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert not [o for o in rendered(capsys, "-f", str(REFERENCE)) if o["kind"] == "PersistentVolumeClaim"]


def test_autoscaled_serving_of_the_final_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = reference_document()
    del document["spec"]["ensemble"]
    document["spec"]["serving"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 5}
    objects = rendered(capsys, "-f", write(tmp_path, document))
    deployment, _, hpa = objects[-3:]
    assert hpa["kind"] == "HorizontalPodAutoscaler" and hpa["spec"]["maxReplicas"] == 5
    args = container(deployment)["args"]
    assert args[args.index("--model") + 1] == "/artifacts/digits/model"
    assert "replicas" not in deployment["spec"]  # the HPA owns it


def test_workloads_carry_their_policy_exceptions_with_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    for obj in rendered(capsys, "-f", str(REFERENCE)):
        if obj["kind"] in ("Job", "Deployment"):
            skips = obj["metadata"]["annotations"]
            assert skips == builders.CHECKOV_SKIPS
            for value in skips.values():
                check, reason = value.split("=", 1)
                assert check.startswith("CKV_K8S_") and len(reason) > 40


def test_invalid_or_missing_manifests_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = reference_document()
    document["spec"]["tuning"]["pruner"] = "sha"
    path = write(tmp_path, document)
    assert main(["render", "-f", path]) == 1
    assert f"{path}: spec.tuning.pruner:" in capsys.readouterr().err
    assert main(["render", "-f", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml: no such file" in capsys.readouterr().err

"""The TrainingPipeline models: the reference and examples validate; invalid manifests fail naming
the field, in the API server's `path: message` style."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.operator.api import rules
from conveyor.operator.api.resource import ManifestError, TrainingPipeline, load_manifest, parse
from conveyor.operator.api.spec import StorageSpec
from conveyor.operator.api.status import GateStatus
from conveyor.trainer.config import GateSpec, gate_message
from tests.helpers.manifests import EXAMPLES, INVALID, REFERENCE, reference_document


def test_reference_pipeline_validates_as_written() -> None:
    [pipeline] = load_manifest(REFERENCE)
    spec = pipeline.spec
    assert pipeline.name == "digits"
    assert spec.tuning is not None and spec.tuning.algorithm == "tpe" and spec.tuning.trials == 12
    assert [p.name for p in spec.tuning.parameters] == [
        "optimizer.learningRate",
        "training.batchSize",
        "model.dropout",
    ]
    assert spec.resources.workers == 2 and spec.resources.processes_per_worker == 1
    assert spec.evaluation.gate is not None and spec.evaluation.gate.min == 0.95
    assert spec.ensemble is not None and spec.ensemble.top_k == 3
    assert spec.serving is not None and spec.serving.quantization == "int8"
    assert spec.storage.uri == "pvc://conveyor-artifacts"
    config = spec.trainer_config({"optimizer.learningRate": 0.01})
    assert config.optimizer.learning_rate == 0.01 and config.model.architecture == "cnn"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_validates(path: Path) -> None:
    [pipeline] = load_manifest(path)
    assert pipeline.name == path.stem


def test_examples_cover_the_promised_tasks() -> None:
    names = {p.stem for p in EXAMPLES.glob("*.yaml")}
    assert {"digits", "iris", "wine", "breast-cancer", "diabetes"} <= names
    [diabetes] = load_manifest(EXAMPLES / "diabetes.yaml")
    assert diabetes.spec.task.type == "regression"
    assert diabetes.spec.ensemble is not None and diabetes.spec.ensemble.method != "hardVoting"
    [cancer] = load_manifest(EXAMPLES / "breast-cancer.yaml")
    assert cancer.spec.task.metric == "rocAuc"


def test_minimal_manifest_gets_defaults() -> None:
    [pipeline] = load_manifest(
        "apiVersion: conveyor.dev/v1alpha1\nkind: TrainingPipeline\nmetadata: {name: tiny}\nspec: {}\n"
    )
    spec = pipeline.spec
    assert spec.tuning is None and spec.ensemble is None and spec.serving is None
    assert spec.task.metric == "accuracy" and spec.resources.workers == 1
    assert spec.backoff_limit == 2 and spec.suspend is False


@pytest.mark.parametrize(("mutate", "path", "word"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_manifest_names_the_field(
    reference: dict[str, Any], mutate: Callable[[dict[str, Any]], None], path: str, word: str
) -> None:
    mutate(reference)
    with pytest.raises(ManifestError) as caught:
        parse(reference)
    problems = caught.value.problems
    paths = [p for p, _ in problems]
    assert path in paths, f"expected a problem at {path}, got {problems}"
    message = next(m for p, m in problems if p == path)
    assert word.lower() in message.lower(), message
    assert f"{path}: " in str(caught.value)


def test_every_problem_is_listed(reference: dict[str, Any]) -> None:
    reference["spec"]["tuning"]["pruner"] = "nope"
    reference["spec"]["model"]["hidden"] = 3
    reference["spec"]["resources"]["workers"] = 0
    with pytest.raises(ManifestError) as caught:
        parse(reference)
    assert {p for p, _ in caught.value.problems} == {
        "spec.tuning.pruner",
        "spec.model.hidden",
        "spec.resources.workers",
    }


def test_invalid_corpus_files(tmp_path: Path) -> None:
    corpus = Path(__file__).parent / "manifests" / "invalid"
    files = sorted(corpus.glob("*.yaml"))
    assert files, "the invalid corpus is empty"
    for path in files:
        expected = yaml.safe_load(path.read_text().split("\n---\n")[0].removeprefix("# expect: ").strip())
        with pytest.raises(ManifestError) as caught:
            load_manifest(path)
        assert expected in [p for p, _ in caught.value.problems], (path.name, caught.value.problems)


def test_multiple_documents_and_missing_file(tmp_path: Path) -> None:
    document = reference_document()
    other = copy.deepcopy(document)
    other["metadata"]["name"] = "digits-2"
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([document, other]))
    assert [p.name for p in load_manifest(path)] == ["digits", "digits-2"]
    other["spec"]["tuning"]["trials"] = 0
    path.write_text(yaml.safe_dump_all([document, other]))
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.problems[0][0] == "document 2: spec.tuning.trials"
    with pytest.raises(FileNotFoundError):
        load_manifest(str(tmp_path / "absent.yaml"))


def test_tunable_names_cover_the_training_sections() -> None:
    for name in (
        "optimizer.learningRate",
        "training.batchSize",
        "model.dropout",
        "model.hiddenSize",
        "optimizer.schedule.name",
        "training.earlyStopping.patience",
        "data.augmentation.randomShift",
    ):
        assert name in rules.TUNABLE
    assert not any(n.startswith(("task.", "data.split", "data.source", "evaluation.")) for n in rules.TUNABLE)


def test_wire_roundtrip(reference: dict[str, Any]) -> None:
    pipeline = parse(reference)
    again = TrainingPipeline.model_validate(pipeline.to_wire())
    assert again == pipeline


# Where data and artifacts come from: only forms something mounts or reads are accepted, and a field
# that nothing reads any more is refused rather than silently ignored.
@pytest.mark.parametrize(
    ("section", "values", "path", "word"),
    [
        ("storage", {"uri": "s3://bucket/runs"}, "spec.storage.uri", "object stores"),
        ("storage", {"uri": "/data/runs"}, "spec.storage.uri", "pvc://claim"),
        ("storage", {"uri": "pvc://Claim_1"}, "spec.storage.uri", "claim name"),
        ("data", {"source": "pvc:///sets/t.csv"}, "spec.data", "claim"),
        ("data", {"source": "pvc://Sets/t.csv"}, "spec.data", "claim"),
        ("data", {"credentialsSecret": "S3 Keys"}, "spec.data.credentialsSecret", "pattern"),
        ("cleanPodPolicy", "All", "spec.cleanPodPolicy", "unknown field"),
    ],
    ids=["s3-storage", "path-storage", "bad-claim", "no-claim", "upper-claim", "bad-secret", "removed"],
)
def test_storage_and_data_sources_are_what_the_pods_mount(
    reference: dict[str, Any], section: str, values: Any, path: str, word: str
) -> None:
    spec = reference["spec"]
    spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
    with pytest.raises(ManifestError) as caught:
        parse(reference)
    problems = dict(caught.value.problems)
    assert word in problems.get(path, "").lower(), caught.value.problems


def test_pvc_data_source_and_credentials_validate(reference: dict[str, Any]) -> None:
    reference["spec"]["data"].update(source="pvc://datasets/tables/t.csv", credentialsSecret="s3-reader")
    reference["spec"]["storage"] = {"uri": "pvc://shared.claim/teams/a"}
    spec = parse(reference).spec
    assert spec.data.credentials_secret == "s3-reader" and spec.storage.uri == "pvc://shared.claim/teams/a"


@pytest.mark.parametrize(
    ("uri", "valid"),
    [("pvc://a", True), ("pvc://a.b-c/x/y/", True), ("pvc://A", False), ("s3://b/p", False), ("/p", False)],
)
def test_storage_rule_and_its_cel_twin_agree(uri: str, valid: bool) -> None:
    cel = pytest.importorskip("cel")
    (rule,) = rules.STORAGE_RULES
    assert rule.check(StorageSpec.model_construct(uri=uri)) is valid
    assert cel.evaluate(rule.cel, {"self": {"uri": uri}}) is valid
    assert cel.evaluate(rule.cel, {"self": {}}) is True


def test_one_gate_message_for_the_spec_and_the_status() -> None:
    spec_gate = GateSpec(metric="accuracy", min=0.95)
    status_gate = GateStatus(metric="accuracy", min=0.95, value=0.9731, passed=True)
    expected = "model test accuracy 0.9731 passes the gate (accuracy >= 0.95)"
    assert gate_message(spec_gate, 0.9731, "model test") == expected
    assert gate_message(status_gate, status_gate.value, "model test") == expected
    both = GateSpec(metric="rmse", min=0.1, max=0.5)
    assert gate_message(both, 0.7, "test") == "test rmse 0.7000 fails the gate (rmse >= 0.1 and <= 0.5)"
    assert gate_message(spec_gate, None, "ensemble test").endswith("fails the gate (accuracy >= 0.95)")


def _user_loop(document: dict[str, Any]) -> dict[str, Any]:
    """The reference turned into an L3 pipeline: its own program, tuned through placeholders."""
    document["spec"]["training"] = {
        "command": ["python", "train.py", "--lr", "{{params.optimizer.learningRate}}"],
        "maxSteps": 300,
    }
    document["spec"]["tuning"]["parameters"] = [
        {"name": "optimizer.learningRate", "type": "float", "min": 0.0001, "max": 0.1, "log": True}
    ]
    return document


def test_a_user_program_tuned_through_placeholders_validates(reference: dict[str, Any]) -> None:
    spec = parse(_user_loop(reference)).spec
    assert spec.training.user_loop and spec.training.max_steps == 300
    assert spec.trainer_config({"optimizer.learningRate": 0.01}).optimizer.learning_rate == 0.01


def test_a_placeholder_without_tuning_is_refused(reference: dict[str, Any]) -> None:
    document = _user_loop(reference)
    for section in ("tuning", "ensemble"):
        document["spec"].pop(section)
    with pytest.raises(ManifestError) as error:
        parse(document)
    assert dict(error.value.problems)["spec.training.command"].startswith("every {{params.NAME}}")


def test_a_malformed_placeholder_is_refused(reference: dict[str, Any]) -> None:
    document = _user_loop(reference)
    document["spec"]["training"]["command"][-1] = "{{param.optimizer.learningRate}}"
    with pytest.raises(ManifestError) as error:
        parse(document)
    assert "spec.training.command" in dict(error.value.problems)


def test_model_options_are_tunable_by_key(reference: dict[str, Any]) -> None:
    reference["spec"]["model"] = {"entrypoint": "mypkg.models:build", "options": {"width": 64}}
    reference["spec"]["tuning"]["parameters"][2] = {
        "name": "model.options.width",
        "type": "categorical",
        "values": [32, 128],
    }
    spec = parse(reference).spec
    assert spec.trainer_config({"model.options.width": 128}).model.options == {"width": 128}


def test_code_path_is_for_local_runs_only(reference: dict[str, Any]) -> None:
    """`conveyor run` and `conveyor validate` accept code.path; the operator refuses it (InvalidSpec)."""
    reference["spec"]["code"] = {"path": "src"}
    spec = parse(reference).spec
    assert rules.cluster_problems(spec) == [rules.CODE_PATH_ON_CLUSTER]
    field, message = rules.CODE_PATH_ON_CLUSTER
    assert field == "spec.code.path" and "conveyor apply -f" in message and "code.configMap" in message
    reference["spec"]["code"] = {"configMap": "digits-code"}
    assert rules.cluster_problems(parse(reference).spec) == []


def test_scheduling_image_moved_to_code_image(reference: dict[str, Any]) -> None:
    reference["spec"]["scheduling"] = {"image": "my/trainer:2"}
    with pytest.raises(ManifestError) as error:
        parse(reference)
    assert "spec.scheduling.image" in dict(error.value.problems)
    reference["spec"]["scheduling"] = {}
    reference["spec"]["code"] = {"image": "my/trainer:2"}
    assert parse(reference).spec.code.image == "my/trainer:2"

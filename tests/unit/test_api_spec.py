"""The TrainingPipeline models: the reference and examples validate; invalid manifests fail naming
the field, in the API server's `path: message` style."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import EXAMPLES, REFERENCE, reference_document
from conveyor.operator.api import rules
from conveyor.operator.api.resource import ManifestError, TrainingPipeline, load_manifest, parse


def test_reference_pipeline_validates_as_written() -> None:
    [pipeline] = load_manifest(REFERENCE if REFERENCE.exists() else EXAMPLES / "digits.yaml")
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


def test_digits_example_is_the_reference() -> None:
    if not REFERENCE.exists():
        pytest.skip("shared design folder not present")
    assert yaml.safe_load((EXAMPLES / "digits.yaml").read_text()) == yaml.safe_load(REFERENCE.read_text())


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


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(document: dict[str, Any]) -> None:
        node = document
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(leaf)] = value
        elif value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value

    return apply


DELETE = object()

# (id, mutation of the reference manifest, expected field path, a word the message must contain)
INVALID: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("parallelism-over-trials", _set("spec.tuning.parallelism", 20), "spec.tuning.parallelism", "trials"),
    ("unknown-algorithm", _set("spec.tuning.algorithm", "bayes"), "spec.tuning.algorithm", "tpe"),
    ("unknown-pruner", _set("spec.tuning.pruner", "asha2"), "spec.tuning.pruner", "hyperband"),
    ("zero-trials", _set("spec.tuning.trials", 0), "spec.tuning.trials", "greater than or equal"),
    ("too-many-trials", _set("spec.tuning.trials", 501), "spec.tuning.trials", "500"),
    (
        "gate-metric-regression-only",
        _set("spec.evaluation.gate.metric", "rmse"),
        "spec.evaluation.gate.metric",
        "classification",
    ),
    (
        "gate-without-bound",
        _set("spec.evaluation.gate", {"metric": "accuracy"}),
        "spec.evaluation.gate",
        "min",
    ),
    (
        "eval-metric-wrong-task",
        _set("spec.evaluation.metrics", ["accuracy", "r2"]),
        "spec.evaluation.metrics",
        "task",
    ),
    (
        "gpu-needs-matching-processes",
        _set("spec.resources.gpu", 2),
        "spec.resources.processesPerWorker",
        "gpu",
    ),
    ("zero-workers", _set("spec.resources.workers", 0), "spec.resources.workers", "greater"),
    ("bad-memory-quantity", _set("spec.resources.memory", "lots"), "spec.resources.memory", "pattern"),
    ("grid-with-float", _set("spec.tuning.algorithm", "grid"), "spec.tuning.parameters", "categorical"),
    (
        "unknown-parameter-name",
        _set("spec.tuning.parameters.0", {"name": "optimizer.lr", "type": "float", "min": 0.001, "max": 0.1}),
        "spec.tuning.parameters[0].name",
        "optimizer.learningRate",
    ),
    (
        "task-is-not-tunable",
        _set(
            "spec.tuning.parameters.0", {"name": "task.type", "type": "categorical", "values": ["regression"]}
        ),
        "spec.tuning.parameters[0].name",
        "dotted",
    ),
    (
        "float-min-above-max",
        _set(
            "spec.tuning.parameters.0",
            {"name": "optimizer.learningRate", "type": "float", "min": 0.1, "max": 0.01},
        ),
        "spec.tuning.parameters[0].max",
        "min < max",
    ),
    (
        "float-without-bounds",
        _set("spec.tuning.parameters.0", {"name": "optimizer.learningRate", "type": "float"}),
        "spec.tuning.parameters[0].max",
        "min",
    ),
    (
        "log-from-zero",
        _set(
            "spec.tuning.parameters.2",
            {"name": "model.dropout", "type": "float", "min": 0.0, "max": 0.5, "log": True},
        ),
        "spec.tuning.parameters[2].min",
        "min > 0",
    ),
    (
        "categorical-without-values",
        _set("spec.tuning.parameters.1", {"name": "training.batchSize", "type": "categorical"}),
        "spec.tuning.parameters[1].values",
        "values",
    ),
    (
        "categorical-empty-values",
        _set("spec.tuning.parameters.1", {"name": "training.batchSize", "type": "categorical", "values": []}),
        "spec.tuning.parameters[1].values",
        "non-empty",
    ),
    (
        "value-the-trainer-rejects",
        _set("spec.tuning.parameters.2", {"name": "model.dropout", "type": "float", "min": 0.0, "max": 1.5}),
        "spec.tuning.parameters[2]",
        "model.dropout",
    ),
    (
        "categorical-value-the-trainer-rejects",
        _set(
            "spec.tuning.parameters.1",
            {"name": "training.batchSize", "type": "categorical", "values": [32, 0]},
        ),
        "spec.tuning.parameters[1]",
        "batchSize",
    ),
    (
        "duplicate-parameter",
        _set(
            "spec.tuning.parameters.2",
            {"name": "optimizer.learningRate", "type": "float", "min": 0.001, "max": 0.01},
        ),
        "spec.tuning.parameters",
        "unique",
    ),
    ("no-parameters", _set("spec.tuning.parameters", []), "spec.tuning.parameters", "at least 1"),
    (
        "unknown-parameter-type",
        _set("spec.tuning.parameters.0.type", "double"),
        "spec.tuning.parameters[0].type",
        "categorical",
    ),
    ("ensemble-without-tuning", _set("spec.tuning", DELETE), "spec.ensemble", "tuning"),
    ("topk-over-trials", _set("spec.ensemble.topK", 20), "spec.ensemble.topK", "trials"),
    (
        "unknown-ensemble-method",
        _set("spec.ensemble.method", "stacking"),
        "spec.ensemble.method",
        "softVoting",
    ),
    (
        "hard-voting-regression",
        lambda d: (
            d["spec"]["task"].update({"type": "regression", "objective": {"metric": "rmse"}}),
            d["spec"]["evaluation"].update({"metrics": ["rmse"], "gate": {"metric": "r2", "min": 0.1}}),
            d["spec"]["ensemble"].update({"method": "hardVoting"}),
        ),
        "spec.ensemble.method",
        "classification",
    ),
    ("objective-wrong-task", _set("spec.task.objective.metric", "rmse"), "spec.task", "classification"),
    ("unknown-top-level-field", _set("spec.tuner", {}), "spec.tuner", "allowed here"),
    ("typo-in-section", _set("spec.training.epoch", 3), "spec.training.epoch", "epochs"),
    ("unknown-architecture", _set("spec.model.architecture", "vit"), "spec.model.architecture", "mlp"),
    ("unknown-dataset", _set("spec.data.source", "builtin://mnist"), "spec.data", "builtin://digits"),
    (
        "split-leaves-nothing",
        _set("spec.data.split", {"validation": 0.5, "test": 0.45}),
        "spec.data.split",
        "0.9",
    ),
    (
        "reserved-env",
        _set("spec.env", [{"name": "MASTER_ADDR", "value": "x"}]),
        "spec.env[0].name",
        "reserved",
    ),
    (
        "bad-pull-policy",
        _set("spec.scheduling.imagePullPolicy", "Sometimes"),
        "spec.scheduling.imagePullPolicy",
        "IfNotPresent",
    ),
    ("negative-deadline", _set("spec.activeDeadlineSeconds", 0), "spec.activeDeadlineSeconds", "greater"),
    ("negative-ttl", _set("spec.ttlSecondsAfterFinished", -1), "spec.ttlSecondsAfterFinished", "greater"),
    ("bad-clean-pod-policy", _set("spec.cleanPodPolicy", "Some"), "spec.cleanPodPolicy", "Running"),
    ("long-name", _set("metadata.name", "x" * 41), "metadata.name", "40"),
    ("upper-case-name", _set("metadata.name", "Digits"), "metadata.name", "DNS-1123"),
    ("bad-quantization", _set("spec.serving.quantization", "int4"), "spec.serving.quantization", "int8"),
    ("wrong-api-version", _set("apiVersion", "conveyor.dev/v1"), "apiVersion", "v1alpha1"),
    ("wrong-kind", _set("kind", "TrainJob"), "kind", "TrainingPipeline"),
    ("no-spec", _set("spec", DELETE), "spec", "required"),
]


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

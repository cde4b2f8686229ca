"""The manifests tests start from: the reference example, read in place, and invalid variants of it.

`INVALID` is shared by the Python validation tests (tests/unit/test_api_spec.py) and the CEL agreement
tests (tests/unit/test_api_cel.py): one row per way a manifest can be wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
REFERENCE = EXAMPLES / "digits.yaml"


def reference_document() -> dict[str, Any]:
    """The reference pipeline (manifests/examples/digits.yaml) as a fresh dict."""
    document: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    return document


def validation_problems(document: dict[str, Any]) -> dict[str, str]:
    """Message by field path of everything `conveyor validate` (the Python validation) rejects."""
    from conveyor.operator.api.resource import ManifestError, parse

    try:
        parse(document)
    except ManifestError as error:
        return dict(error.problems)
    return {}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting the dotted `path` (list indices as numbers) to `value`, or removing it (DELETE)."""

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
INVALID: list[tuple[str, Callable[[dict[str, Any]], object], str, str]] = [
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
        "float-for-integer-field",
        _set(
            "spec.tuning.parameters.1", {"name": "training.batchSize", "type": "float", "min": 16, "max": 128}
        ),
        "spec.tuning.parameters[1].type",
        "int",
    ),
    (
        "int-with-fractional-bound",
        _set(
            "spec.tuning.parameters.1", {"name": "training.batchSize", "type": "int", "min": 16.5, "max": 128}
        ),
        "spec.tuning.parameters[1].min",
        "whole-number",
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
    ("long-name", _set("metadata.name", "x" * 41), "metadata.name", "40"),
    ("upper-case-name", _set("metadata.name", "Digits"), "metadata.name", "DNS-1123"),
    ("storage-not-a-claim", _set("spec.storage.uri", "s3://bucket/runs"), "spec.storage.uri", "pvc://"),
    ("bad-quantization", _set("spec.serving.quantization", "int4"), "spec.serving.quantization", "int8"),
    ("wrong-api-version", _set("apiVersion", "conveyor.dev/v1"), "apiVersion", "v1alpha1"),
    ("wrong-kind", _set("kind", "TrainJob"), "kind", "TrainingPipeline"),
    ("no-spec", _set("spec", DELETE), "spec", "required"),
    (
        "entrypoint-is-not-tunable",
        _set(
            "spec.tuning.parameters.1", {"name": "model.entrypoint", "type": "categorical", "values": ["a:b"]}
        ),
        "spec.tuning.parameters[1].name",
        "not tunable",
    ),
    (
        "pruner-on-user-loop-without-max-steps",
        _set("spec.training.entrypoint", "mypkg.loop:train"),
        "spec.tuning.pruner",
        "maxSteps",
    ),
    (
        "warmup-steps-on-conveyors-loop",
        _set("spec.tuning.warmupSteps", 10),
        "spec.tuning.warmupSteps",
        "warmupEpochs",
    ),
    (
        "warmup-steps-past-max-steps",
        lambda d: (
            d["spec"]["training"].update({"entrypoint": "mypkg.loop:train", "maxSteps": 100}),
            d["spec"]["tuning"].update({"warmupSteps": 100}),
        ),
        "spec.tuning.warmupSteps",
        "maxSteps",
    ),
    (
        "command-names-an-unknown-parameter",
        lambda d: d["spec"]["training"].update(
            {"command": ["python", "train.py", "--m", "{{params.optimizer.momentum}}"], "maxSteps": 100}
        ),
        "spec.training.command",
        "tuning parameter",
    ),
    (
        "code-path-and-config-map",
        _set("spec.code", {"path": "src", "configMap": "my-code"}),
        "spec.code.configMap",
        "not both",
    ),
]

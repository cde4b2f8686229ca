"""The CEL twin of every Python rule agrees with it, on the manifests the API server would see.

Uses the `common-expression-language` interpreter (a dev dependency). The API server's own CEL (cost
limits, Kubernetes extensions) is checked against a real kube-apiserver by the integration tests. Every
invalid manifest of `tests.helpers.manifests.INVALID` has a verdict here: the failures the CEL rules
report, and what the Python validation reports at the case's field.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from conveyor.operator.api import rules
from tests.helpers.manifests import INVALID, reference_document, validation_problems

cel = pytest.importorskip("cel")

RULE_GROUPS = {
    "ROOT_RULES": rules.ROOT_RULES,
    "SPEC_RULES": rules.SPEC_RULES,
    "TUNING_RULES": rules.TUNING_RULES,
    "PARAMETER_RULES": rules.PARAMETER_RULES,
    "RESOURCES_RULES": rules.RESOURCES_RULES,
    "STORAGE_RULES": rules.STORAGE_RULES,
    "ENV_RULES": rules.ENV_RULES,
}


def _nodes(document: dict[str, Any]) -> list[tuple[str, tuple[rules.Rule, ...], dict[str, Any]]]:
    """(path prefix, rules, the object they sit on) for every rule-carrying object of a manifest, as the
    API server sees it after defaulting: sections present (the CRD defaults them to {})."""
    spec = document.get("spec", {})
    found: list[tuple[str, tuple[rules.Rule, ...], dict[str, Any]]] = [("", rules.ROOT_RULES, document)]
    found.append(("spec.", rules.SPEC_RULES, spec))
    found.append(("spec.resources.", rules.RESOURCES_RULES, spec.get("resources", {})))
    found.append(("spec.storage.", rules.STORAGE_RULES, spec.get("storage", {})))
    tuning = spec.get("tuning")
    if isinstance(tuning, dict):
        found.append(("spec.tuning.", rules.TUNING_RULES, tuning))
        for index, parameter in enumerate(tuning.get("parameters", [])):
            found.append((f"spec.tuning.parameters[{index}].", rules.PARAMETER_RULES, parameter))
    for index, env in enumerate(spec.get("env") or []):
        found.append((f"spec.env[{index}].", rules.ENV_RULES, env))
    return found


def _defaulted(document: dict[str, Any]) -> dict[str, Any]:
    """What the API server's defaulting makes of a manifest (only the defaults the rules read)."""
    document = copy.deepcopy(document)
    spec = document.setdefault("spec", {})
    task = spec.setdefault("task", {})
    task.setdefault("type", "classification")
    task.setdefault("objective", {})
    spec.setdefault("evaluation", {})
    resources = spec.setdefault("resources", {})
    resources.setdefault("gpu", 0)
    resources.setdefault("processesPerWorker", 1)
    tuning = spec.get("tuning")
    if isinstance(tuning, dict):
        tuning.setdefault("algorithm", "tpe")
        tuning.setdefault("trials", 10)
        tuning.setdefault("parallelism", 1)
        tuning.setdefault("parameters", [])
        for parameter in tuning["parameters"]:
            parameter.setdefault("log", False)
    return document


def _cel_failures(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(field path, message) of every CEL rule the manifest breaks, paths as the API server reports them."""
    failures = set()
    for prefix, node_rules, node in _nodes(_defaulted(document)):
        for rule in node_rules:
            if rule.cel and not cel.evaluate(rule.cel, {"self": node}):
                failures.add((prefix + rule.field, rule.message))
    return failures


def test_every_rule_group_is_checked() -> None:
    assert set(RULE_GROUPS) == {name for name in vars(rules) if name.endswith("_RULES")}


def test_every_rule_compiles() -> None:
    for group in RULE_GROUPS.values():
        for rule in group:
            if rule.cel:
                cel.compile(rule.cel)


def test_reference_passes_every_cel_rule() -> None:
    assert _cel_failures(reference_document()) == set()
    assert validation_problems(reference_document()) == {}


PARALLELISM, GRID_CATEGORICAL, UNIQUE_NAMES = rules.TUNING_RULES
(TUNABLE_NAME, MIN_BELOW_MAX, LOG_NEEDS_POSITIVE_MIN, CATEGORICAL_VALUES, INTEGER_TYPE, WHOLE_BOUNDS) = (
    rules.PARAMETER_RULES
)
(PROCESSES_PER_GPU,) = rules.RESOURCES_RULES
(RESERVED_ENV,) = rules.ENV_RULES
(
    OBJECTIVE_METRIC,
    EVALUATION_METRICS,
    GATE_METRIC,
    ENSEMBLE_NEEDS_TUNING,
    TOP_K,
    HARD_VOTING,
    PRUNER_NEEDS_MAX_STEPS,
    WARMUP_STEPS_USER_LOOP,
    WARMUP_BELOW_MAX_STEPS,
    COMMAND_PARAMETERS,
    CODE_PATH_OR_CONFIG_MAP,
) = rules.SPEC_RULES
(NAME,) = rules.ROOT_RULES
(STORAGE_URI,) = rules.STORAGE_RULES
RULE_MESSAGES = {rule.message for group in RULE_GROUPS.values() for rule in group}

Verdict = tuple[tuple[tuple[str, rules.Rule], ...], rules.Rule | None]


def both(path: str, rule: rules.Rule) -> Verdict:
    """CEL and Python both reject the manifest with `rule`, at `path`."""
    return ((path, rule),), rule


# The API server's schema (types, enums, bounds, patterns, required fields) rejects the manifest before
# any rule matters; every CEL rule accepts it, and Python reports a schema error (not a rule's message).
SCHEMA: Verdict = ((), None)
# A Python check the CRD cannot express (it needs the training config or the data catalogue): the API
# server accepts the manifest, every CEL rule too; `conveyor validate` and the operator reject it.
PYTHON_ONLY: Verdict = ((), None)

# Per INVALID case: (the CEL failures as (path, rule), the rule whose message Python reports at the case's
# field, or None when that message is no rule's: a schema error or a Python-only check).
VERDICTS: dict[str, Verdict] = {
    "parallelism-over-trials": both("spec.tuning.parallelism", PARALLELISM),
    "unknown-algorithm": SCHEMA,
    "unknown-pruner": SCHEMA,
    # Python stops at the field error; CEL evaluates every rule that reads trials.
    "zero-trials": ((("spec.tuning.parallelism", PARALLELISM), ("spec.ensemble.topK", TOP_K)), None),
    "too-many-trials": SCHEMA,
    "gate-metric-regression-only": both("spec.evaluation.gate.metric", GATE_METRIC),
    "gate-without-bound": PYTHON_ONLY,
    "eval-metric-wrong-task": both("spec.evaluation.metrics", EVALUATION_METRICS),
    "gpu-needs-matching-processes": both("spec.resources.processesPerWorker", PROCESSES_PER_GPU),
    "zero-workers": SCHEMA,
    "bad-memory-quantity": SCHEMA,
    "grid-with-float": both("spec.tuning.parameters", GRID_CATEGORICAL),
    "unknown-parameter-name": both("spec.tuning.parameters[0].name", TUNABLE_NAME),
    "task-is-not-tunable": both("spec.tuning.parameters[0].name", TUNABLE_NAME),
    "float-min-above-max": both("spec.tuning.parameters[0].max", MIN_BELOW_MAX),
    "float-without-bounds": both("spec.tuning.parameters[0].max", MIN_BELOW_MAX),
    "log-from-zero": both("spec.tuning.parameters[2].min", LOG_NEEDS_POSITIVE_MIN),
    # No CEL twin: CEL cannot see the untyped `values` (the operator refuses a missing list); the
    # schema's minItems refuses an empty one on the API server. Python reports the rule.
    "categorical-without-values": ((), CATEGORICAL_VALUES),
    "categorical-empty-values": ((), CATEGORICAL_VALUES),
    "float-for-integer-field": both("spec.tuning.parameters[1].type", INTEGER_TYPE),
    "int-with-fractional-bound": both("spec.tuning.parameters[1].min", WHOLE_BOUNDS),
    "value-the-trainer-rejects": PYTHON_ONLY,
    "categorical-value-the-trainer-rejects": PYTHON_ONLY,
    "duplicate-parameter": both("spec.tuning.parameters", UNIQUE_NAMES),
    "no-parameters": SCHEMA,
    "unknown-parameter-type": SCHEMA,
    "ensemble-without-tuning": both("spec.ensemble", ENSEMBLE_NEEDS_TUNING),
    "topk-over-trials": both("spec.ensemble.topK", TOP_K),
    "unknown-ensemble-method": SCHEMA,
    "hard-voting-regression": both("spec.ensemble.method", HARD_VOTING),
    # Python's task section rejects the metric itself, before the spec rule runs.
    "objective-wrong-task": ((("spec.task.objective.metric", OBJECTIVE_METRIC),), None),
    "unknown-top-level-field": SCHEMA,
    "typo-in-section": SCHEMA,
    "unknown-architecture": SCHEMA,
    "unknown-dataset": PYTHON_ONLY,
    "split-leaves-nothing": PYTHON_ONLY,
    "reserved-env": both("spec.env[0].name", RESERVED_ENV),
    "bad-pull-policy": SCHEMA,
    "negative-deadline": SCHEMA,
    "negative-ttl": SCHEMA,
    "long-name": both("metadata.name", NAME),
    # The API server checks the DNS-1123 form of every name itself; CEL adds only the length limit.
    "upper-case-name": ((), NAME),
    "storage-not-a-claim": both("spec.storage.uri", STORAGE_URI),
    "bad-quantization": SCHEMA,
    "wrong-api-version": SCHEMA,
    "wrong-kind": SCHEMA,
    "no-spec": SCHEMA,
    "entrypoint-is-not-tunable": both("spec.tuning.parameters[1].name", TUNABLE_NAME),
    "pruner-on-user-loop-without-max-steps": both("spec.tuning.pruner", PRUNER_NEEDS_MAX_STEPS),
    "warmup-steps-on-conveyors-loop": both("spec.tuning.warmupSteps", WARMUP_STEPS_USER_LOOP),
    "warmup-steps-past-max-steps": both("spec.tuning.warmupSteps", WARMUP_BELOW_MAX_STEPS),
    # No CEL twin: finding every placeholder needs a regex search; the operator refuses it (InvalidSpec).
    "command-names-an-unknown-parameter": ((), COMMAND_PARAMETERS),
    "code-path-and-config-map": both("spec.code.configMap", CODE_PATH_OR_CONFIG_MAP),
}


def test_every_invalid_case_has_a_verdict() -> None:
    assert list(VERDICTS) == [case[0] for case in INVALID]


@pytest.mark.parametrize(("case", "mutate", "path"), [c[:3] for c in INVALID], ids=[c[0] for c in INVALID])
def test_cel_and_python_agree(case: str, mutate: Any, path: str) -> None:
    cel_rejects, python_rule = VERDICTS[case]
    document = reference_document()
    mutate(document)
    assert _cel_failures(document) == {(where, rule.message) for where, rule in cel_rejects}
    problems = validation_problems(document)
    assert path in problems, problems
    if python_rule is None:
        assert problems[path] not in RULE_MESSAGES, problems[path]
    else:
        assert problems[path] == python_rule.message


@pytest.mark.parametrize(
    ("name", "tunable"),
    [
        ("model.options.width", True),
        ("model.options.dropout_rate", True),
        ("model.options", False),
        ("model.options.a.b", False),
        ("model.entrypoint", False),
        ("training.entrypoint", False),
        ("training.command", False),
        ("training.maxSteps", True),
        ("optimizer.learningRate", True),
    ],
)
def test_tunable_names_agree(name: str, tunable: bool) -> None:
    """The CEL and the Python forms of the tunable-name rule accept the same names."""
    assert cel.evaluate(TUNABLE_NAME.cel, {"self": {"name": name}}) is tunable
    assert rules.is_tunable(name) is tunable


def test_user_loop_rules_accept_a_complete_user_loop() -> None:
    """A user loop with maxSteps and warmupSteps below it passes every rule, CEL and Python."""
    document = reference_document()
    document["spec"]["training"].update(
        {"command": ["python", "train.py", "--lr", "{{params.optimizer.learningRate}}"], "maxSteps": 200}
    )
    document["spec"]["tuning"]["warmupSteps"] = 20
    document["spec"]["code"] = {"configMap": "digits-code", "image": "reg/me:1"}
    assert _cel_failures(document) == set()
    assert validation_problems(document) == {}

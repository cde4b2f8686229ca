"""Cross-field rules of the TrainingPipeline, written once and enforced twice.

Each rule carries a CEL expression (emitted into the CRD as `x-kubernetes-validations`, so the API
server enforces it) and a Python predicate over the validated pydantic model (so `conveyor validate` and
`conveyor run` enforce it), with ONE message for both. tests/unit/test_api_cel.py checks that each
Python predicate and its CEL twin agree on the invalid-manifest table (where a CEL interpreter is
installed), and the CEL stays simple (lists bounded with maxItems in the schema) so the API server's
cost estimator accepts it.

`field` is the path of the offending field relative to the object the rule sits on; it becomes the
CEL `fieldPath` and the tail of the Python error path, so both report e.g. `spec.tuning.parallelism`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel, JsonValue
from pydantic_core import PydanticCustomError

from conveyor.operator import command_template
from conveyor.operator.workloads import RESERVED_ENV
from conveyor.trainer.config import (
    CLASSIFICATION_METRICS,
    PVC_URI_PATTERN,
    REGRESSION_METRICS,
    TrainerConfig,
)

# Sections of the training config a trial may change. The data split, source and task are fixed for a
# whole pipeline: every trial and the evaluation must see the same data.
TUNABLE_SECTIONS = ("model", "optimizer", "training", "data.preprocessing", "data.augmentation")


def _leaves(model: type[BaseModel], prefix: str) -> list[tuple[str, Any]]:
    """(dotted wire name, annotation) of every leaf field under `model`."""
    found: list[tuple[str, Any]] = []
    for name, field in model.model_fields.items():
        wire = f"{prefix}.{field.alias or name}"
        annotation = field.annotation
        candidates = (
            [annotation, *get_args(annotation)] if get_origin(annotation) is not None else [annotation]
        )
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is not None:
            found.extend(_leaves(sub, wire))
        else:
            found.append((wire, annotation))
    return found


def _is_integer(annotation: Any) -> bool:
    return {a for a in (annotation, *get_args(annotation)) if a is not type(None)} == {int}


def tunable_names(integers_only: bool = False) -> tuple[str, ...]:
    """Every dotted manifest name a tuning parameter may set, e.g. `optimizer.learningRate` (with
    `integers_only`, those of integer fields, e.g. `training.batchSize`)."""
    names: list[str] = []
    for section in TUNABLE_SECTIONS:
        model: type[BaseModel] = TrainerConfig
        for part in section.split("."):
            field = next(f for n, f in model.model_fields.items() if (f.alias or n) == part)
            annotation = field.annotation
            model = next(
                c
                for c in (annotation, *get_args(annotation))
                if isinstance(c, type) and issubclass(c, BaseModel)
            )
        names.extend(n for n, a in _leaves(model, section) if not integers_only or _is_integer(a))
    return tuple(names)


# Fields that name code or a program, not a value to search: a trial cannot swap them. `model.options`
# is free-form, so its keys are tunable one by one as `model.options.<key>` (OPTIONS_PATTERN).
UNTUNABLE = ("model.entrypoint", "model.options", "training.entrypoint", "training.command")
OPTIONS_PATTERN = "^model[.]options[.][A-Za-z0-9_-]+$"
TUNABLE = tuple(n for n in tunable_names() if n not in UNTUNABLE)
TUNABLE_INTEGERS = tuple(n for n in tunable_names(integers_only=True) if n not in UNTUNABLE)


def is_tunable(name: str) -> bool:
    return name in TUNABLE or re.match(OPTIONS_PATTERN, name) is not None


@dataclass(frozen=True)
class Rule:
    field: str  # relative to the object the rule is attached to, dotted; "" for the object itself
    cel: str
    message: str
    check: Callable[[Any], bool]

    def to_cel(self) -> dict[str, JsonValue]:
        rule: dict[str, JsonValue] = {"rule": self.cel, "message": self.message}
        if self.field and not self.field.startswith("metadata."):
            # The API server accepts fieldPath only inside the schema (metadata is not in it).
            rule["fieldPath"] = "." + self.field
        return rule


def enforce(model: Any, rules: Sequence[Rule]) -> Any:
    """Raise the first broken rule as a pydantic error whose context names the field."""
    for rule in rules:
        if not rule.check(model):
            raise PydanticCustomError(
                "conveyor_rule", "{message}", {"field": rule.field, "message": rule.message}
            )
    return model


def cel_rules(rules: Sequence[Rule]) -> list[dict[str, JsonValue]]:
    return [rule.to_cel() for rule in rules if rule.cel]


def schema_extra(rules: Sequence[Rule]) -> dict[str, JsonValue]:
    """`json_schema_extra` of a model: its rules as CEL, picked up by the CRD generator."""
    validations: list[JsonValue] = [rule.to_cel() for rule in rules if rule.cel]
    return {"x-kubernetes-validations": validations}


def _cel_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


_TASK_METRICS_CEL = (
    f"(self.task.type == 'regression' ? {_cel_list(('loss', *REGRESSION_METRICS))}"
    f" : {_cel_list(('loss', *CLASSIFICATION_METRICS))})"
)
_METRICS_HINT = (
    f"classification: loss, {', '.join(CLASSIFICATION_METRICS)}; "
    f"regression: loss, {', '.join(REGRESSION_METRICS)}"
)


def _task_metrics(spec: Any) -> tuple[str, ...]:
    return ("loss", *(REGRESSION_METRICS if spec.task.type == "regression" else CLASSIFICATION_METRICS))


PARAMETER_RULES = (
    Rule(
        "name",
        f"self.name in {_cel_list(TUNABLE)} || self.name.matches('{OPTIONS_PATTERN}')",
        "must be a dotted field of model, optimizer, training, data.preprocessing or data.augmentation "
        "as written in the manifest, e.g. optimizer.learningRate, training.batchSize, model.dropout, or "
        "model.options.<key> for model.entrypoint (entrypoints and training.command are not tunable)",
        lambda p: is_tunable(p.name),
    ),
    Rule(
        "max",
        "self.type == 'categorical' || (has(self.min) && has(self.max) && self.min < self.max)",
        "float and int parameters need min and max with min < max",
        lambda p: p.type == "categorical" or (p.min is not None and p.max is not None and p.min < p.max),
    ),
    Rule(
        "min",
        "!has(self.log) || !self.log || (has(self.min) && self.min > 0.0)",
        "log: true needs min > 0 (a log scale cannot reach 0 or negative values)",
        lambda p: not p.log or (p.min is not None and p.min > 0),
    ),
    Rule(
        "values",
        # No CEL: `values` holds untyped items (str, int, float, bool), so the API server's CEL type of a
        # parameter has no `values` field ("undefined field"), and a schema anyOf would report the
        # type, not the missing list. The schema refuses an empty list (minItems: 1); a missing one
        # is refused by `conveyor validate` and by the operator's first step (InvalidSpec).
        "",
        "categorical parameters need a non-empty values list, e.g. values: [32, 64, 128]",
        lambda p: p.type != "categorical" or bool(p.values),
    ),
    Rule(
        "type",
        f"self.type != 'float' || !(self.name in {_cel_list(TUNABLE_INTEGERS)})",
        "must be int or categorical for an integer field (a float parameter would give it fractional "
        "values), e.g. {name: training.batchSize, type: int, min: 16, max: 128}",
        lambda p: p.type != "float" or p.name not in TUNABLE_INTEGERS,
    ),
    Rule(
        "min",
        "self.type != 'int' || ((!has(self.min) || self.min == double(int(self.min)))"
        " && (!has(self.max) || self.max == double(int(self.max))))",
        "int parameters need whole-number bounds, e.g. min: 16, max: 128",
        lambda p: p.type != "int" or all(v is None or float(v).is_integer() for v in (p.min, p.max)),
    ),
)

TUNING_RULES = (
    Rule(
        "parallelism",
        "self.parallelism <= self.trials",
        "must be <= trials (how many of the trials run at once)",
        lambda t: t.parallelism <= t.trials,
    ),
    Rule(
        "parameters",
        "self.algorithm != 'grid' || self.parameters.all(p, p.type == 'categorical')",
        "grid search needs only categorical parameters (give each a values list), "
        "or use algorithm random, tpe or cmaes",
        lambda t: t.algorithm != "grid" or all(p.type == "categorical" for p in t.parameters),
    ),
    Rule(
        "parameters",
        "self.parameters.all(p, self.parameters.exists_one(q, q.name == p.name))",
        "parameter names must be unique",
        lambda t: len({p.name for p in t.parameters}) == len(t.parameters),
    ),
)

RESOURCES_RULES = (
    Rule(
        "processesPerWorker",
        # has(): the API server also checks the rule against the schema's default ({}).
        "!has(self.gpu) || self.gpu == 0"
        " || (has(self.processesPerWorker) && self.processesPerWorker == self.gpu)",
        "must equal gpu when gpu > 0 (one training process per GPU)",
        lambda r: r.gpu == 0 or r.processes_per_worker == r.gpu,
    ),
)

ENV_RULES = (
    Rule(
        "name",
        f"!(self.name in {_cel_list(RESERVED_ENV)})",
        "is reserved: Conveyor sets it itself (the workload's identity, torchrun's rendezvous, data mounts)",
        lambda e: e.name not in RESERVED_ENV,
    ),
)

STORAGE_RULES = (
    Rule(
        "uri",
        f"!has(self.uri) || self.uri.matches('{PVC_URI_PATTERN}')",
        "must be pvc://CLAIM[/PATH] (a claim name is lower case letters, digits, '-' and '.'): every stage "
        "pod mounts the claim and reads and writes artifacts as files; object stores and local paths are "
        "not artifact roots",
        lambda s: s.uri is None or re.match(PVC_URI_PATTERN, s.uri) is not None,
    ),
)

SPEC_RULES: tuple[Rule, ...] = (
    Rule(
        "task.objective.metric",
        f"!has(self.task.objective.metric) || self.task.objective.metric in {_TASK_METRICS_CEL}",
        f"must be a metric computed for the task type ({_METRICS_HINT})",
        lambda s: s.task.objective.metric in _task_metrics(s),
    ),
    Rule(
        "evaluation.metrics",
        f"!has(self.evaluation.metrics) || self.evaluation.metrics.all(m, m in {_TASK_METRICS_CEL})",
        f"every metric must be computed for the task type ({_METRICS_HINT})",
        lambda s: all(m in _task_metrics(s) for m in s.evaluation.metrics or ()),
    ),
    Rule(
        "evaluation.gate.metric",
        f"!has(self.evaluation.gate) || self.evaluation.gate.metric in {_TASK_METRICS_CEL}",
        f"must be a metric the evaluation computes for the task type ({_METRICS_HINT})",
        lambda s: s.evaluation.gate is None or s.evaluation.gate.metric in _task_metrics(s),
    ),
    Rule(
        "ensemble",
        "!has(self.ensemble) || has(self.tuning)",
        "an ensemble combines the best tuning trials: add spec.tuning or remove spec.ensemble",
        lambda s: s.ensemble is None or s.tuning is not None,
    ),
    Rule(
        "ensemble.topK",
        "!has(self.ensemble) || !has(self.tuning) || self.ensemble.topK <= self.tuning.trials",
        "must be <= tuning.trials (members are the best trials)",
        lambda s: s.ensemble is None or s.tuning is None or s.ensemble.top_k <= s.tuning.trials,
    ),
    Rule(
        "ensemble.method",
        "!has(self.ensemble) || self.ensemble.method != 'hardVoting' || self.task.type == 'classification'",
        "hardVoting needs a classification task; use softVoting or weightedAverage (regression)",
        lambda s: s.ensemble is None or s.ensemble.method != "hardVoting" or s.task.type == "classification",
    ),
)

_USER_LOOP_CEL = "has(self.training) && (has(self.training.entrypoint) || has(self.training.command))"


def _unknown_placeholders(spec: Any) -> bool:
    """training.command refers only to tuning parameters, and every `{{...}}` in it is such a reference."""
    command = spec.training.command or []
    names = {p.name for p in spec.tuning.parameters} if spec.tuning is not None else set()
    return bool(command_template.malformed(command)) or any(
        n not in names for n in command_template.references(command)
    )


_USER_CODE = (
    Rule(
        "tuning.pruner",
        "!has(self.tuning) || !has(self.tuning.pruner) || self.tuning.pruner == 'none'"
        f" || !({_USER_LOOP_CEL}) || has(self.training.maxSteps)",
        "a pruner on training.entrypoint or training.command needs training.maxSteps (the steps your "
        "reports count at most: the pruners' maximum resource); set it or use pruner: none",
        lambda s: (
            s.tuning is None
            or s.tuning.pruner == "none"
            or not s.training.user_loop
            or s.training.max_steps is not None
        ),
    ),
    Rule(
        "tuning.warmupSteps",
        f"!has(self.tuning) || !has(self.tuning.warmupSteps) || ({_USER_LOOP_CEL})",
        "counts the steps a user loop reports: only with training.entrypoint or training.command "
        "(Conveyor's own loop warms up in epochs: tuning.warmupEpochs)",
        lambda s: s.tuning is None or s.tuning.warmup_steps is None or s.training.user_loop,
    ),
    Rule(
        "tuning.warmupSteps",
        "!has(self.tuning) || !has(self.tuning.warmupSteps) || !has(self.training)"
        " || !has(self.training.maxSteps) || self.tuning.warmupSteps < self.training.maxSteps",
        "must be < training.maxSteps (the steps every trial runs before a pruner may stop it)",
        lambda s: (
            s.tuning is None
            or s.tuning.warmup_steps is None
            or s.training.max_steps is None
            or s.tuning.warmup_steps < s.training.max_steps
        ),
    ),
    Rule(
        "training.command",
        # No CEL: finding every {{...}} in every argument needs a regex search the test interpreter
        # lacks; the operator's first step refuses it (InvalidSpec) before any pod.
        "",
        "every {{params.NAME}} must name a tuning parameter (spec.tuning.parameters[].name, e.g. "
        "{{params.optimizer.learningRate}}); add the parameter to spec.tuning or write the value",
        lambda s: not _unknown_placeholders(s),
    ),
    Rule(
        "code.configMap",
        "!has(self.code) || !has(self.code.path) || !has(self.code.configMap)",
        "give code.path (a directory, packed by `conveyor apply`) or code.configMap (already packed), "
        "not both",
        lambda s: s.code.path is None or s.code.config_map is None,
    ),
)

SPEC_RULES = (*SPEC_RULES, *_USER_CODE)

# What only the operator refuses: manifests `conveyor run` and `conveyor validate` accept, but a cluster
# cannot run. Reported as the pipeline's InvalidSpec before any pod (field path, message).
CODE_PATH_ON_CLUSTER = (
    "spec.code.path",
    "is a directory on your machine, which the operator cannot read; apply the pipeline with "
    "`conveyor apply -f` (it packs the directory into a ConfigMap and sets code.configMap) or set "
    "code.configMap or code.image yourself",
)


def cluster_problems(spec: Any) -> list[tuple[str, str]]:
    """(field path, message) of what a spec asks that only a local run can do."""
    return [CODE_PATH_ON_CLUSTER] if spec.code.path is not None else []


NAME_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME = 40

ROOT_RULES = (
    Rule(
        "metadata.name",
        # The API server checks the DNS-1123 form of every name itself; CEL adds only the length.
        f"!has(self.metadata.name) || size(self.metadata.name) <= {MAX_NAME}",
        f"must be a DNS-1123 label of at most {MAX_NAME} characters (lower case letters, digits, '-'; "
        "children are named <name>-trial-0007-...)",
        lambda r: (
            r.metadata.name is None
            or (len(r.metadata.name) <= MAX_NAME and re.match(NAME_PATTERN, r.metadata.name) is not None)
        ),
    ),
)

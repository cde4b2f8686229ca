"""The TrainingPipeline object and manifest loading with API-server-style error messages.

`load_manifest` accepts a path or YAML text (one or more documents) and returns validated
`TrainingPipeline` objects, or raises `ManifestError` listing every problem as
`spec.tuning.parallelism: <what is wrong and how to fix it>` — the field-path style of the API
server's schema and CEL errors, so a manifest the cluster would reject is rejected locally with the
same words.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from conveyor.operator.api import API_VERSION, KIND, rules
from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import PipelineStatus


class ObjectMeta(BaseModel):
    """The metadata fields Conveyor reads; everything else the API server adds is kept as is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None


class TrainingPipeline(BaseModel):
    """One declarative pipeline: prepare, tune, train, evaluate, ensemble and serve."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=rules.schema_extra(rules.ROOT_RULES),
    )

    api_version: Literal["conveyor.dev/v1alpha1"] = Field(default="conveyor.dev/v1alpha1", alias="apiVersion")
    kind: Literal["TrainingPipeline"] = "TrainingPipeline"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TrainingPipelineSpec
    status: PipelineStatus | None = None

    @model_validator(mode="after")
    def _rules(self) -> TrainingPipeline:
        return rules.enforce(self, rules.ROOT_RULES)

    @property
    def name(self) -> str:
        return self.metadata.name or "pipeline"

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ManifestError(ValueError):
    """A manifest that would be rejected; `problems` are (field path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        lines = [f"{path}: {message}" if path else message for path, message in problems]
        super().__init__(head + "invalid TrainingPipeline\n" + "\n".join(f"  {line}" for line in lines))


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class a location points into, for listing the allowed fields of a typo."""
    model: type[BaseModel] | None = TrainingPipeline
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        model = _first_model(field.annotation)
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        # Union members show up in the location ("str", "int", ...); they mean nothing to a user.
        loc = tuple(p for p in loc if not (isinstance(p, str) and p in {"str", "int", "float", "bool"}))
        message = item["msg"]
        ctx = item.get("ctx") or {}
        if item["type"] == "conveyor_rule":
            field = ctx.get("field", "")
            path = _path(loc)
            path = f"{path}.{field}" if path and field and not field.startswith("[") else path + field
        else:
            path = _path(loc)
            message = message.removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                parent = _model_at(loc[:-1])
                allowed = sorted((f.alias or n) for n, f in parent.model_fields.items()) if parent else []
                message = "unknown field" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
            elif item["type"] == "missing":
                message = "required field is missing"
        problems.append((path, message))
    return problems


def parse(document: dict[str, Any], source: str | None = None) -> TrainingPipeline:
    """Validate one manifest document (a dict as loaded from YAML or read from the API)."""
    if not isinstance(document, dict):
        raise ManifestError([("", "a manifest must be a YAML mapping")], source)
    problems: list[tuple[str, str]] = []
    if document.get("apiVersion") != API_VERSION:
        problems.append(("apiVersion", f"must be {API_VERSION}"))
    if document.get("kind") != KIND:
        problems.append(("kind", f"must be {KIND}"))
    if problems:
        raise ManifestError(problems, source)
    try:
        return TrainingPipeline.model_validate(document)
    except ValidationError as error:
        raise ManifestError(_problems(error), source) from None


def load_manifest(path_or_text: str | Path) -> list[TrainingPipeline]:
    """Every TrainingPipeline in a YAML file or text (documents separated by ---)."""
    source: str | None = None
    looks_like_path = isinstance(path_or_text, str) and "\n" not in path_or_text and ":" not in path_or_text
    if looks_like_path and not Path(path_or_text).is_file():
        raise FileNotFoundError(f"{path_or_text}: no such file")
    if isinstance(path_or_text, Path) or looks_like_path:
        source = str(path_or_text)
        text = Path(path_or_text).read_text()
    else:
        text = str(path_or_text)
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise ManifestError([("", f"not valid YAML: {error}")], source) from None
    if not documents:
        raise ManifestError([("", "no TrainingPipeline in the manifest")], source)
    pipelines = []
    problems: list[tuple[str, str]] = []
    for index, document in enumerate(documents):
        try:
            pipelines.append(parse(document, source))
        except ManifestError as error:
            prefix = f"document {index + 1}: " if len(documents) > 1 else ""
            problems.extend((f"{prefix}{path}", message) for path, message in error.problems)
    if problems:
        raise ManifestError(problems, source)
    return pipelines

"""The generated CRD: committed file in sync with the models, structural, and carrying the rules,
descriptions, defaults and printer columns users rely on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from conveyor.operator.api import rules
from conveyor.operator.api.crd import CRD_PATH, crd, crd_yaml
from tests.helpers.manifests import REPO

FORBIDDEN = ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "title", "prefixItems")


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


def test_committed_crd_matches_the_models() -> None:
    committed = (REPO / CRD_PATH).read_text()
    assert committed == crd_yaml(), f"the CRD drifted from the models: run `conveyor crd > {CRD_PATH}`"


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        for key in FORBIDDEN:
            assert key not in node, f"{path or '<root>'} has {key}"
        assert node.get("additionalProperties") is not False, path
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        if "properties" in node:
            assert "additionalProperties" not in node, path
        if node.get("type") == "array":
            assert "items" in node and "maxItems" in node, f"{path}: lists must be bounded for CEL"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        if "default" in node:
            assert node["default"] is not None, path


def test_free_form_only_where_meant() -> None:
    free = {p for p, n in _walk(_schema()) if n.get("x-kubernetes-preserve-unknown-fields")}
    assert free == {
        ".spec.tuning.parameters[].values[]",
        ".spec.model.options",
        ".spec.scheduling.tolerations[]",
        ".spec.scheduling.affinity",
        ".status.trials[].params",
        ".status.trials[].attrs",
        ".status.tuning.samplerState",
        ".status.bestTrial.params",
        ".metadata",
    } - {".metadata"}


def test_nullable_instead_of_anyof_null() -> None:
    tuning = _schema()["properties"]["spec"]["properties"]["tuning"]
    assert tuning["nullable"] is True and tuning["type"] == "object"


def test_descriptions_read_well_in_kubectl_explain() -> None:
    tuning = _schema()["properties"]["spec"]["properties"]["tuning"]
    assert "study" in tuning["description"].lower()
    for name in ("algorithm", "trials", "parallelism", "pruner", "parameters", "maxFailedTrials", "seed"):
        assert tuning["properties"][name].get("description"), name
    assert tuning["properties"]["algorithm"]["enum"] == ["random", "grid", "tpe", "cmaes"]
    assert tuning["properties"]["algorithm"]["default"] == "tpe"
    assert tuning["properties"]["trials"]["maximum"] == 500


def test_sections_default_so_nested_defaults_apply() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["task"]["default"] == {} and spec["resources"]["default"] == {}
    assert spec["task"]["properties"]["type"]["default"] == "classification"
    assert "default" not in spec["tuning"]


def test_cel_rules_match_the_python_rules() -> None:
    schema = _schema()
    spec = schema["properties"]["spec"]
    tuning = spec["properties"]["tuning"]
    placements = [
        (spec, rules.SPEC_RULES),
        (tuning, rules.TUNING_RULES),
        (tuning["properties"]["parameters"]["items"], rules.PARAMETER_RULES),
        (spec["properties"]["resources"], rules.RESOURCES_RULES),
        (spec["properties"]["env"]["items"], rules.ENV_RULES),
        (schema, rules.ROOT_RULES),
    ]
    for node, expected in placements:
        assert node["x-kubernetes-validations"] == [r.to_cel() for r in expected if r.cel]
    for _, expected in placements:
        for rule in expected:
            assert len(rule.cel) < 1500 and rule.message


def test_names_columns_and_subresources() -> None:
    document = crd()
    assert document["metadata"]["name"] == "trainingpipelines.conveyor.dev"
    names = document["spec"]["names"]
    assert names["shortNames"] == ["tp"] and names["kind"] == "TrainingPipeline"
    assert "conveyor" in names["categories"]
    version = document["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Progress"] == ".status.progress"
    assert columns["Best"] == ".status.bestObjective" and columns["Endpoint"] == ".status.serving.url"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_crd_yaml_parses() -> None:
    assert yaml.safe_load(crd_yaml()) == crd()

"""The CEL twin of every Python rule agrees with it, on the manifests the API server would see.

Uses the `common-expression-language` interpreter (a dev dependency). The API server's own CEL (cost
limits, Kubernetes extensions) is checked against a real kube-apiserver by the integration tests. Rules
without CEL (the API server cannot express them) are checked by Python only and left out here.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_api_spec import INVALID

from conftest import reference_document
from conveyor.operator.api import rules
from conveyor.operator.api.resource import ManifestError, parse

cel = pytest.importorskip("cel")

RULE_GROUPS = (
    rules.ROOT_RULES,
    rules.SPEC_RULES,
    rules.TUNING_RULES,
    rules.PARAMETER_RULES,
    rules.RESOURCES_RULES,
    rules.ENV_RULES,
)


def _nodes(document: dict[str, Any]) -> list[tuple[tuple[rules.Rule, ...], dict[str, Any]]]:
    """(rules, the object they sit on) for every rule-carrying object of a manifest, as the API server
    sees it after defaulting: sections present (the CRD defaults them to {})."""
    spec = document.get("spec", {})
    found: list[tuple[tuple[rules.Rule, ...], dict[str, Any]]] = [(rules.ROOT_RULES, document)]
    found.append((rules.SPEC_RULES, spec))
    found.append((rules.RESOURCES_RULES, spec.get("resources", {})))
    tuning = spec.get("tuning")
    if isinstance(tuning, dict):
        found.append((rules.TUNING_RULES, tuning))
        for parameter in tuning.get("parameters", []):
            found.append((rules.PARAMETER_RULES, parameter))
    for env in spec.get("env") or []:
        found.append((rules.ENV_RULES, env))
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


def _cel_failures(document: dict[str, Any]) -> set[str]:
    failures = set()
    for node_rules, node in _nodes(_defaulted(document)):
        for rule in node_rules:
            if rule.cel and not cel.evaluate(rule.cel, {"self": node}):
                failures.add(rule.message)
    return failures


def _python_failures(document: dict[str, Any]) -> set[str]:
    try:
        parse(document)
    except ManifestError as error:
        return {message for _, message in error.problems}
    return set()


def test_every_rule_compiles() -> None:
    for group in RULE_GROUPS:
        for rule in group:
            if rule.cel:
                cel.compile(rule.cel)


def test_reference_passes_every_cel_rule() -> None:
    assert _cel_failures(reference_document()) == set()


# The API server validates the DNS-1123 form of every name itself; CEL adds only the length limit.
API_SERVER_OWN = {"upper-case-name"}


@pytest.mark.parametrize(
    "mutate",
    [c[1] for c in INVALID if c[0] not in API_SERVER_OWN],
    ids=[c[0] for c in INVALID if c[0] not in API_SERVER_OWN],
)
def test_cel_and_python_agree(mutate: Any) -> None:
    document = reference_document()
    mutate(document)
    if not isinstance(document.get("spec"), dict):
        pytest.skip("no spec")
    all_messages = {
        r.message
        for g in RULE_GROUPS
        for r in g
        if r.cel
    }
    python = _python_failures(document) & all_messages
    cel_found = _cel_failures(document)
    # Python stops at field errors before cross-field rules run; whatever Python reports, CEL reports.
    assert python <= cel_found, (python, cel_found)

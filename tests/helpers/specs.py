"""Specs the engine tests start from: the reference pipeline with sections replaced, and a small sweep."""

from __future__ import annotations

import copy
from typing import Any

from conveyor.operator.api.resource import parse
from conveyor.operator.api.spec import TrainingPipelineSpec
from tests.helpers.manifests import reference_document


def make_spec(**changes: Any) -> TrainingPipelineSpec:
    """The reference spec with top-level spec fields replaced (None removes a section)."""
    document = copy.deepcopy(reference_document())
    for key, value in changes.items():
        if value is None:
            document["spec"].pop(key, None)
        else:
            document["spec"][key] = value
    return parse(document).spec


def small_tuning(**changes: Any) -> dict[str, Any]:
    tuning = copy.deepcopy(reference_document()["spec"]["tuning"])
    tuning.update({"trials": 6, "parallelism": 2, "pruner": "none"})
    tuning.update(changes)
    return tuning

"""Shared fixtures of the pure unit tests: the reference manifest and a spec builder."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

# simulation.py (the fake executor) sits beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared" / "design" / "pipeline.yaml"
EXAMPLES = REPO / "manifests" / "examples"


def reference_document() -> dict[str, Any]:
    path = REFERENCE if REFERENCE.exists() else EXAMPLES / "digits.yaml"
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


@pytest.fixture
def reference() -> dict[str, Any]:
    return copy.deepcopy(reference_document())

"""Fixtures of the pure unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.manifests import reference_document


@pytest.fixture
def reference() -> dict[str, Any]:
    """The reference manifest as a dict the test may change."""
    return reference_document()

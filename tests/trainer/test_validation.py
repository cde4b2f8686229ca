"""The fast per-epoch metrics agree with the evaluation's scikit-learn based ones."""

from __future__ import annotations

import numpy as np
import pytest

from conveyor.trainer.metrics import compute_metrics
from conveyor.trainer.validation import classification_metrics, regression_metrics


@pytest.mark.parametrize(
    ("classes", "absent"),
    [(2, None), (3, None), (10, None), (4, 3)],
    ids=["binary", "3", "10", "absent-class"],
)
def test_matches_the_evaluation_metrics(classes: int, absent: int | None) -> None:
    rng = np.random.default_rng(classes)
    n = 300
    y = rng.integers(0, classes, n)
    if absent is not None:
        y[y == absent] = 0  # a class with no rows in the split
    logits = rng.normal(size=(n, classes)) + 2.0 * np.eye(classes)[y] * rng.random((n, 1))
    logits[:20] = np.round(logits[:20])  # ties in the scores
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    fast = classification_metrics(y, proba)
    reference = compute_metrics("classification", y, proba, classes)
    assert fast.keys() == reference.keys()
    for name, value in reference.items():
        assert fast[name] == pytest.approx(value, abs=1e-9), name


def test_regression_matches_the_evaluation_metrics() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(150, 70, 200).astype(np.float32)
    predictions = (y + rng.normal(0, 30, 200)).astype(np.float32)
    reference = compute_metrics("regression", y, predictions)
    fast = regression_metrics(y, predictions)
    assert fast.keys() == reference.keys()
    for name, value in reference.items():
        assert fast[name] == pytest.approx(value, rel=1e-6), name

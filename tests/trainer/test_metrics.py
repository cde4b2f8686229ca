"""Metrics against values computed by hand (and, for multiclass AUC, against scikit-learn's own)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conveyor.trainer import metrics
from conveyor.trainer.config import CLASSIFICATION_METRICS, REGRESSION_METRICS

CASES = [
    # (name, y_true, labels or probabilities, expected subset)
    (
        "balanced binary labels",
        [0, 0, 1, 1],
        [0, 1, 1, 1],
        {"accuracy": 0.75, "precision": 5 / 6, "recall": 0.75, "f1": (2 / 3 + 0.8) / 2},
    ),
    (
        "imbalanced: weighted differs from macro",
        [0, 0, 0, 1],
        [0, 0, 1, 1],
        {
            "precision": 0.75,
            "recall": 5 / 6,
            "f1": (0.8 + 2 / 3) / 2,
            "precisionWeighted": 0.875,
            "recallWeighted": 0.75,
            "f1Weighted": (3 * 0.8 + 2 / 3) / 4,
        },
    ),
    (
        "binary probabilities: AUC and log loss",
        [0, 0, 1, 1],
        [[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]],
        {
            "accuracy": 0.75,
            "rocAuc": 0.75,
            "logLoss": -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4,
        },
    ),
    (
        "three classes, perfectly ranked",
        [0, 1, 2],
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
        {"accuracy": 1.0, "f1": 1.0, "rocAuc": 1.0},
    ),
]


@pytest.mark.parametrize(("name", "y", "output", "expected"), CASES, ids=[c[0] for c in CASES])
def test_classification_table(name: str, y: list[int], output: list, expected: dict[str, float]) -> None:
    result = metrics.compute_metrics("classification", np.array(y), np.array(output))
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key


def test_probabilities_report_every_manifest_metric_and_weighted_variants() -> None:
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(4), size=200)
    y = rng.integers(0, 4, size=200)
    result = metrics.compute_metrics("classification", y, proba)
    assert set(CLASSIFICATION_METRICS) | set(metrics.WEIGHTED_METRICS) <= set(result)
    assert result["rocAuc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def test_hard_labels_leave_out_probability_metrics() -> None:
    result = metrics.compute_metrics("classification", [0, 1, 2], [0, 1, 1], num_classes=3)
    assert "rocAuc" not in result and "logLoss" not in result
    assert result["accuracy"] == pytest.approx(2 / 3)


def test_single_class_split_omits_auc_instead_of_nan() -> None:
    result = metrics.compute_metrics("classification", [1, 1], [[0.2, 0.8], [0.6, 0.4]])
    assert "rocAuc" not in result
    assert all(math.isfinite(v) for v in result.values())


def test_log_loss_survives_zero_probability() -> None:
    result = metrics.compute_metrics("classification", [0, 1], [[0.0, 1.0], [0.0, 1.0]])
    assert math.isfinite(result["logLoss"]) and result["logLoss"] > 10


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        metrics.compute_metrics("classification", [0, 1, 1], [[0.5, 0.5], [0.5, 0.5]])


@pytest.mark.parametrize(
    ("y", "pred", "expected"),
    [
        ([1, 2, 3], [1, 2, 5], {"mse": 4 / 3, "rmse": math.sqrt(4 / 3), "mae": 2 / 3, "r2": -1.0}),
        ([0.0, 2.0], [0.0, 2.0], {"mse": 0.0, "mae": 0.0, "r2": 1.0}),
    ],
)
def test_regression_table(y: list[float], pred: list[float], expected: dict[str, float]) -> None:
    result = metrics.compute_metrics("regression", y, pred)
    assert set(REGRESSION_METRICS) <= set(result)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key


def test_confusion_matrix_and_per_class() -> None:
    assert metrics.confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1], 3) == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    report = metrics.per_class([0, 0, 1, 2], [0, 1, 1, 1], ["a", "b", "c"])
    assert report["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert report["c"]["support"] == 1 and report["c"]["f1"] == 0.0


def test_importable_without_torch() -> None:
    code = "import sys, conveyor.trainer.metrics; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

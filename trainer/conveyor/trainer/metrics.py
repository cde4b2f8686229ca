"""Evaluation metrics over plain arrays, shared by validation (training), evaluation and ensembles.

One entry point, `compute_metrics(task, y_true, output)`, returns the metrics under the names the
manifest uses (`conveyor.trainer.config.CLASSIFICATION_METRICS` / `REGRESSION_METRICS`) plus the
weighted variants (`precisionWeighted`, `recallWeighted`, `f1Weighted`). `precision`, `recall` and
`f1` are macro averages. Classification takes class probabilities `[n, classes]` (the model's softmax)
or, when only hard labels exist (hard voting), integer labels `[n]` — then the probability-based
metrics (`rocAuc`, `logLoss`) are left out rather than faked. A metric that is undefined for the data
(ROC-AUC when the test split holds a single class) is left out too, so reports never carry NaN.

Pure numpy and scikit-learn: no torch, so the control plane and the training loop import it cheaply.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from conveyor.trainer.config import TaskType

PROBABILITY_EPS = 1e-12
WEIGHTED_METRICS = ("precisionWeighted", "recallWeighted", "f1Weighted")


def compute_metrics(
    task: TaskType, y_true: Any, output: Any, num_classes: int | None = None
) -> dict[str, float]:
    """Every metric for `task`: probabilities/labels for classification, predictions for regression."""
    if task == "classification":
        return classification_metrics(y_true, output, num_classes)
    return regression_metrics(y_true, output)


# --- classification ---------------------------------------------------------------------------


def _labels_and_proba(
    y_true: Any, output: Any, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    out = np.asarray(output)
    if out.ndim == 2:
        proba = out.astype(np.float64)
        classes = num_classes or proba.shape[1]
        if proba.shape != (y.shape[0], classes):
            raise ValueError(f"probabilities have shape {proba.shape}, expected ({y.shape[0]}, {classes})")
        return y, proba.argmax(axis=1), proba, classes
    pred = out.astype(np.int64).reshape(-1)
    if pred.shape != y.shape:
        raise ValueError(f"predictions have shape {pred.shape}, labels {y.shape}")
    classes = num_classes or int(max(y.max(initial=0), pred.max(initial=0)) + 1)
    return y, pred, None, classes


def classification_metrics(y_true: Any, output: Any, num_classes: int | None = None) -> dict[str, float]:
    y, pred, proba, classes = _labels_and_proba(y_true, output, num_classes)
    if y.size == 0:
        raise ValueError("cannot compute metrics on an empty split")
    labels = list(range(classes))
    result: dict[str, float] = {"accuracy": float(np.mean(pred == y))}
    for average, suffix in (("macro", ""), ("weighted", "Weighted")):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y, pred, labels=labels, average=average, zero_division=0
        )
        result[f"precision{suffix}"] = float(p)
        result[f"recall{suffix}"] = float(r)
        result[f"f1{suffix}"] = float(f)
    if proba is not None:
        auc = roc_auc(y, proba)
        if auc is not None:
            result["rocAuc"] = auc
        result["logLoss"] = log_loss(y, proba)
    return result


def _normalised(proba: np.ndarray) -> np.ndarray:
    clipped = np.clip(proba, PROBABILITY_EPS, None)
    normalised: np.ndarray = clipped / clipped.sum(axis=1, keepdims=True)
    return normalised


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities renormalised and clipped)."""
    p = _normalised(proba)[np.arange(y.shape[0]), y]
    return float(-np.mean(np.log(p)))


def roc_curves(y: np.ndarray, proba: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest ROC curve (fpr, tpr, auc) per class that has both positives and negatives.

    For two classes only the positive class (1) is returned: its curve is the binary ROC.
    """
    classes = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    curves = {}
    for c in classes:
        positives = y == c
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = skm.roc_curve(positives, proba[:, c])
        curves[c] = (fpr, tpr, float(skm.auc(fpr, tpr)))
    return curves


def roc_auc(y: np.ndarray, proba: np.ndarray) -> float | None:
    """Binary AUC, or the macro one-vs-rest AUC over the classes present; None when undefined."""
    aucs = [
        float(skm.roc_auc_score(y == c, proba[:, c]))
        for c in ([1] if proba.shape[1] == 2 else range(proba.shape[1]))
        if 0 < np.count_nonzero(y == c) < y.shape[0]
    ]
    return float(np.mean(aucs)) if aucs else None


def confusion_matrix(y_true: Any, pred: Any, num_classes: int) -> list[list[int]]:
    """Rows are true classes, columns predicted classes."""
    matrix = skm.confusion_matrix(
        np.asarray(y_true).reshape(-1), np.asarray(pred).reshape(-1), labels=list(range(num_classes))
    )
    return [[int(v) for v in row] for row in matrix]


def per_class(y_true: Any, pred: Any, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support for each class, keyed by class name."""
    p, r, f, s = skm.precision_recall_fscore_support(
        np.asarray(y_true).reshape(-1),
        np.asarray(pred).reshape(-1),
        labels=list(range(len(class_names))),
        zero_division=0,
    )
    return {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(class_names)
    }


# --- regression -------------------------------------------------------------------------------


def regression_metrics(y_true: Any, output: Any) -> dict[str, float]:
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    pred = np.asarray(output, dtype=np.float64).reshape(-1)
    if pred.shape != y.shape:
        raise ValueError(f"predictions have shape {pred.shape}, targets {y.shape}")
    if y.size == 0:
        raise ValueError("cannot compute metrics on an empty split")
    error = pred - y
    mse = float(np.mean(error**2))
    variance = float(np.sum((y - y.mean()) ** 2))
    result = {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(error)))}
    if variance > 0:
        result["r2"] = 1.0 - float(np.sum(error**2)) / variance
    return result

"""Per-epoch validation: every metric of the task on the whole validation split, fast.

The metrics are the evaluation's (`conveyor.trainer.metrics`, same names and definitions: macro and
weighted precision/recall/F1 with zero_division=0, one-vs-rest ROC-AUC over the classes present, log
loss on clipped renormalised probabilities), computed from one confusion matrix and one ranking per
class instead of a dozen scikit-learn calls: validation runs every epoch of every trial, and
scikit-learn's input checking alone cost ~100 ms an epoch on digits, as long as the training epoch
itself. Numpy only, so the training process imports neither scikit-learn nor scipy (seconds of
start-up on a busy machine). The tests check every metric against `metrics.compute_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from conveyor.trainer.artifacts import DatasetMetadata

PROBABILITY_EPS = 1e-12  # as conveyor.trainer.metrics


@torch.no_grad()
def validate(
    model: nn.Module,
    meta: DatasetMetadata,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    autocast: Callable[[], Any],
    batch_size: int,
) -> dict[str, float]:
    """Metrics of `model` on (x, y), plus `loss` (cross-entropy without label smoothing, or the MSE of
    the standardised target for regression)."""
    was_training = model.training
    model.eval()
    chunk = max(batch_size, 1024)
    with autocast():
        outputs = torch.cat([model(x[i : i + chunk]).float() for i in range(0, x.shape[0], chunk)])
    model.train(was_training)
    return output_metrics(meta, outputs, y, loss_fn)


def output_metrics(
    meta: DatasetMetadata,
    outputs: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, float]:
    """`validate`'s metrics from the model's float outputs on the whole split (however gathered)."""
    if meta.task == "classification":
        loss = F.cross_entropy(outputs, y)
        proba = torch.softmax(outputs, dim=1).cpu().numpy()
        return {"loss": float(loss), **classification_metrics(y.cpu().numpy(), proba)}
    loss = loss_fn(outputs, y)
    return {
        "loss": float(loss),
        **regression_metrics(y.cpu().numpy(), outputs.squeeze(-1).cpu().numpy()),
    }


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    n, classes = proba.shape
    pred = proba.argmax(axis=1)
    confusion = np.bincount(y * classes + pred, minlength=classes * classes).reshape(classes, classes)
    hits = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(hits, predicted, out=np.zeros(classes), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(classes), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(classes), where=both > 0)
    weights = support / n
    result = {"accuracy": float(hits.sum() / n)}
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        result[name] = float(values.mean())
        result[f"{name}Weighted"] = float(values @ weights)
    auc = roc_auc(y, proba, support)
    if auc is not None:
        result["rocAuc"] = auc
    clipped = np.clip(proba, PROBABILITY_EPS, None)
    true_p = clipped[np.arange(n), y] / clipped.sum(axis=1)
    result["logLoss"] = float(-np.mean(np.log(true_p)))
    return result


def roc_auc(y: np.ndarray, proba: np.ndarray, support: np.ndarray) -> float | None:
    """One-vs-rest AUC by the rank-sum (Mann-Whitney) identity, ties as average ranks."""
    n, classes = proba.shape
    columns = [1] if classes == 2 else [c for c in range(classes) if 0 < support[c] < n]
    if not columns or not 0 < support[columns[0]] < n:
        return None
    aucs = []
    for c in columns:
        count = int(support[c])
        rank_sum = average_ranks(proba[:, c])[y == c].sum()
        aucs.append((rank_sum - count * (count + 1) / 2) / (count * (n - count)))
    return float(np.mean(aucs))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the average of their ranks (scipy's rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(first) - 1]
    return ranks


def regression_metrics(y: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    error = predictions.astype(np.float64) - y.astype(np.float64)
    mse = float(np.mean(error**2))
    result = {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(error)))}
    variance = float(np.sum((y - y.mean()) ** 2))
    if variance > 0:
        result["r2"] = 1.0 - float(np.sum(error**2)) / variance
    return result

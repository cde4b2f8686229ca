"""The evaluation's PNG plots, drawn with matplotlib's Agg backend (no display needed).

Each function takes plain arrays, writes one PNG and returns its path, so the report can list them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

DPI = 110


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path) -> Path:
    counts = np.asarray(matrix)
    size = max(4.0, 0.45 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45 if max(map(len, classes), default=0) > 3 else 0)
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test)")
    if len(classes) <= 25:
        threshold = counts.max() / 2 if counts.size else 0
        for i, j in np.ndindex(counts.shape):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if counts[i, j] > threshold else "black")
    return _save(fig, path)


def roc_curves(
    curves: dict[int, tuple[np.ndarray, np.ndarray, float]], classes: list[str], path: Path
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    for index, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1.2, label=f"{classes[index]} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, one-vs-rest (test)")
    if curves:
        ax.legend(fontsize=7, loc="lower right", ncol=2 if len(curves) > 10 else 1)
    return _save(fig, path)


def learning_curves(events: list[dict[str, Any]], objective: str, path: Path) -> Path | None:
    """Train loss, validation loss and the objective per epoch; None without epoch events."""
    epochs = [e for e in events if e.get("event") == "epoch" and isinstance(e.get("metrics"), dict)]
    if not epochs:
        return None
    x = [e["epoch"] for e in epochs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("trainLoss", "train loss"), ("loss", "validation loss")):
        values = [e["metrics"].get(key) for e in epochs]
        if any(v is not None for v in values):
            left.plot(x, [np.nan if v is None else v for v in values], marker=".", label=label)
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.set_title("Loss")
    left.legend()
    values = [e["metrics"].get(objective) for e in epochs]
    right.plot(x, [np.nan if v is None else v for v in values], marker=".", color="tab:green")
    right.set_xlabel("epoch")
    right.set_ylabel(objective)
    right.set_title(f"Validation {objective}")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def residuals(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    residual = y_true - y_pred
    left.scatter(y_pred, residual, s=8, alpha=0.6)
    left.axhline(0, color="k", lw=0.8)
    left.set_xlabel("predicted")
    left.set_ylabel("residual (true - predicted)")
    left.set_title("Residuals (test)")
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    right.scatter(y_true, y_pred, s=8, alpha=0.6)
    right.plot([low, high], [low, high], "k--", lw=0.8)
    right.set_xlabel("true")
    right.set_ylabel("predicted")
    right.set_title("Predicted vs true (test)")
    return _save(fig, path)

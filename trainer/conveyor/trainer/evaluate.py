"""`python -m conveyor.trainer evaluate`: a model (or ensemble) directory on the held-out test split.

    python -m conveyor.trainer evaluate --model runs/demo/model --data runs/demo/data \
        --out runs/demo/evaluation/model [--gate-json '{"metric": "accuracy", "min": 0.95}']

Writes into `--out`:

- `report.json`: every metric for the task (names as in the manifest, plus `loss` — the test
  cross-entropy or MSE — and the weighted precision/recall/F1), the confusion matrix and per-class
  scores (classification), the gate outcome, and the plot file names;
- PNGs: `confusion_matrix.png` and `roc.png` (classification), `residuals.png` (regression),
  `learning_curves.png` (when the model directory has epoch events in `progress.jsonl`);
- `result.json` (+ the termination-log summary on Kubernetes) through `progress.write_result`, so the
  control plane reads an evaluation exactly as it reads a training run.

The gate is `--gate-json` when given, else the card's `evaluation.gate`. A failed gate is a result,
not an error: the evaluation succeeds with `gate.passed: false` and exit code 0, and the engine does
not promote the model to serving. Errors (missing files, shape mismatches) exit 1 with a failed result.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from conveyor.trainer import artifacts, metrics, progress
from conveyor.trainer.config import GateSpec, TrainerConfig, gate_message, goal_for

if TYPE_CHECKING:
    from conveyor.trainer.predictor import Predictor

CONFUSION_PNG = "confusion_matrix.png"
ROC_PNG = "roc.png"
RESIDUALS_PNG = "residuals.png"
LEARNING_PNG = "learning_curves.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model or ensemble directory")
    parser.add_argument("--data", required=True, type=Path, help="prepared data directory")
    parser.add_argument("--out", required=True, type=Path, help="evaluation directory to write")
    parser.add_argument("--split", default="test", choices=artifacts.SPLITS)
    parser.add_argument("--gate-json", default=None, help='e.g. {"metric": "accuracy", "min": 0.95}')
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:n]")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs (metrics only)")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        gate = GateSpec.model_validate_json(args.gate_json) if args.gate_json else None
        report = evaluate(args.model, args.data, args.out, args.split, gate, args.device, not args.no_plots)
    except Exception as error:
        progress.write_result(
            args.out,
            {"status": "failed", "reason": type(error).__name__, "message": str(error)[:2000]},
        )
        progress.main_print(f"evaluate: {error}")
        return 1
    result: dict[str, Any] = {
        "status": "succeeded",
        "metrics": report["metrics"],
        "gate": report["gate"],
        "report": str(args.out / artifacts.REPORT_FILE),
        "elapsedSeconds": round(time.monotonic() - started, 2),
    }
    if report.get("objective"):
        result["objective"] = report["objective"]
    progress.write_result(args.out, result)
    return 0


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A prepared split whole (a streamed one too; `split_predictions` reads those a batch at a time)."""
    from conveyor.trainer.data.prepare import load_split as load_prepared

    if not any((data_dir / f"{split}.{suffix}").exists() for suffix in ("npz", "parquet")):
        raise FileNotFoundError(f"{data_dir / split}.npz does not exist; run prepare first (or check --data)")
    return load_prepared(data_dir, split)


def split_predictions(
    predictor: Predictor, meta: artifacts.DatasetMetadata, data_dir: Path, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, labels) on a prepared split; a streamed one (`storage: parquet`) is predicted a batch at
    a time, so only the outputs and labels are ever held whole."""
    if meta.storage != "parquet":
        x, y = load_split(data_dir, split)
        return predictor.predict(x), y
    from conveyor.trainer.data import streaming

    outputs, labels = [], []
    for x, y in streaming.iter_batches(data_dir, split, meta):
        outputs.append(predictor.predict(x))
        labels.append(y)
    return np.concatenate(outputs), np.concatenate(labels)


def dataset_predictions(
    config: TrainerConfig, predictor: Predictor, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, targets) on `data.entrypoint(split)`, predicted a batch at a time (inputs never whole)."""
    from conveyor.trainer.data import datasets

    loader = datasets.batches(datasets.load(config, split), config.task.type, datasets.VALIDATION_BATCH)
    outputs, targets = [], []
    for xb, yb in loader:
        outputs.append(predictor.predict(xb.numpy()))
        targets.append(yb.numpy())
    if not targets:
        raise ValueError(f"data.entrypoint: the {split} split is empty; it must yield (features, target)")
    return np.concatenate(outputs), np.concatenate(targets)


def gate_outcome(gate: GateSpec | None, values: dict[str, float]) -> dict[str, Any] | None:
    if gate is None:
        return None
    value = values.get(gate.metric)
    outcome: dict[str, Any] = {"metric": gate.metric, "min": gate.min, "max": gate.max, "value": value}
    outcome["passed"] = value is not None and gate.passes(value)
    outcome["message"] = gate_message(gate, value, "test")
    return outcome


def evaluate(
    model_dir: Path,
    data_dir: Path,
    out: Path,
    split: str = "test",
    gate: GateSpec | None = None,
    device: str = "auto",
    plots_enabled: bool = True,
) -> dict[str, Any]:
    """Evaluate, write report.json and the plots into `out`, and return the report."""
    from conveyor.trainer import plots
    from conveyor.trainer.predictor import load_predictor

    card = artifacts.read_card(model_dir)
    meta = artifacts.read_metadata(data_dir)
    if list(meta.feature_shape) != list(card.dataset.feature_shape) or meta.classes != card.dataset.classes:
        raise ValueError(
            f"model {model_dir} was trained on different data (shape {card.dataset.feature_shape}, "
            f"classes {card.dataset.classes}) than {data_dir} "
            f"(shape {meta.feature_shape}, classes {meta.classes})"
        )
    predictor = load_predictor(model_dir, device=resolve_device(device))
    if card.config.data.entrypoint:
        output, y = dataset_predictions(card.config, predictor, split)
    else:
        output, y = split_predictions(predictor, meta, data_dir, split)
    task = meta.task
    values = metrics.compute_metrics(task, y, output, meta.num_classes or None)
    values["loss"] = (
        values["logLoss"]
        if task == "classification" and "logLoss" in values
        else values.get("mse", float("nan"))
    )
    out.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, str] = {}
    report: dict[str, Any] = {
        "model": card.name,
        "kind": card.kind,
        "modelDir": str(model_dir),
        "dataDir": str(data_dir),
        "task": task,
        "split": split,
        "samples": len(y),
        "metrics": values,
    }
    requested = card.config.evaluation.metrics
    if requested:
        report["requestedMetrics"] = {name: values[name] for name in requested if name in values}
    objective = card.config.task.metric
    if objective in values:
        report["objective"] = {"metric": objective, "goal": goal_for(objective), "value": values[objective]}
    if task == "classification":
        labels = output.argmax(axis=1)
        classes = meta.classes
        report["classes"] = classes
        report["confusionMatrix"] = metrics.confusion_matrix(y, labels, len(classes))
        report["perClass"] = metrics.per_class(y, labels, classes)
        if plots_enabled:
            plots.confusion_matrix(report["confusionMatrix"], classes, out / CONFUSION_PNG)
            drawn["confusionMatrix"] = CONFUSION_PNG
            plots.roc_curves(metrics.roc_curves(y.astype(np.int64), output), classes, out / ROC_PNG)
            drawn["roc"] = ROC_PNG
    elif plots_enabled:
        plots.residuals(y.astype(np.float64), output.astype(np.float64), out / RESIDUALS_PNG)
        drawn["residuals"] = RESIDUALS_PNG
    events = progress.read_events(model_dir)
    if plots_enabled and plots.learning_curves(events, objective, out / LEARNING_PNG):
        drawn["learningCurves"] = LEARNING_PNG
    report["plots"] = drawn
    report["gate"] = gate_outcome(gate or card.config.evaluation.gate, values)
    artifacts.write_json_atomic(out / artifacts.REPORT_FILE, report)
    progress.main_print(json.dumps({"metrics": values, "gate": report["gate"]}))
    return report


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

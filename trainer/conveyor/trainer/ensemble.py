"""`python -m conveyor.trainer ensemble`: combine trained model directories into one servable model.

    python -m conveyor.trainer ensemble --models runs/demo/trials/t-3 runs/demo/trials/t-7 \
        --method weightedAverage --data runs/demo/data --out runs/demo/ensemble

The ensemble is a model directory like any other (`model.json` with `kind: ensemble`), so evaluate
and serve take it unchanged. Members are *referenced, not copied*: `members` holds their paths,
relative to the ensemble directory when they live in the same run directory (`../trials/t-3`), so a
run directory that is moved, copied or mounted at another path on a serving pod still loads; members
outside the run directory are stored as absolute paths. Copying weights would double storage for
every ensemble while buying nothing within one run directory.

Methods (the combination itself is `conveyor.trainer.predictor.combine`):

- `softVoting`: mean of the members' class probabilities (mean prediction for regression);
- `weightedAverage`: the same, weighted by each member's validation objective score, read from its
  card's `metrics` (computed on the validation split if the card lacks it). For a maximised metric
  (accuracy, f1, r2, ...) the weight is the score (floored at a small positive value); for a
  minimised one (loss, rmse, ...) it is 1/score. Weights are normalised to sum to 1.
- `hardVoting`: majority vote of the members' predicted classes (classification only).

The ensemble's own validation metrics go into its card (and `result.json`), as for a trained model.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from conveyor.trainer import artifacts, metrics, progress
from conveyor.trainer.artifacts import ModelCard
from conveyor.trainer.config import goal_for

METHODS = ("softVoting", "hardVoting", "weightedAverage")
MIN_WEIGHT = 1e-6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, nargs="+", type=Path, help="member model directories")
    parser.add_argument("--method", default="softVoting", choices=METHODS)
    parser.add_argument("--data", required=True, type=Path, help="prepared data directory")
    parser.add_argument("--out", required=True, type=Path, help="ensemble directory to write")
    parser.add_argument("--name", default="ensemble", help="model name (used by serving)")
    parser.add_argument(
        "--metric", default=None, help="validation metric for weightedAverage (default: the objective)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        card = build(args.models, args.method, args.data, args.out, args.name, args.metric)
    except Exception as error:
        progress.write_result(
            args.out, {"status": "failed", "reason": type(error).__name__, "message": str(error)[:2000]}
        )
        progress.main_print(f"ensemble: {error}")
        return 1
    metric = card.config.task.metric
    result: dict[str, Any] = {
        "status": "succeeded",
        "metrics": card.metrics,
        "members": card.members,
        "weights": card.weights,
        "method": card.method,
    }
    if metric in card.metrics:
        result["objective"] = {"metric": metric, "value": card.metrics[metric]}
    progress.write_result(args.out, result)
    return 0


def score_weights(scores: list[float], metric: str) -> list[float]:
    """Member weights (sum 1) from validation scores: the score if maximised, 1/score if minimised."""
    if goal_for(metric) == "minimize":
        raw = [1.0 / max(score, MIN_WEIGHT) for score in scores]
    else:
        raw = [max(score, MIN_WEIGHT) for score in scores]
    total = sum(raw)
    return [w / total for w in raw]


def member_reference(member: Path, ensemble_dir: Path) -> str:
    """Relative to the ensemble directory when both live in the same run directory, else absolute."""
    member, ensemble_dir = member.resolve(), ensemble_dir.resolve()
    run_root = ensemble_dir.parent
    if member.is_relative_to(run_root):
        return os.path.relpath(member, ensemble_dir)
    return str(member)


def build(
    members: list[Path],
    method: str,
    data_dir: Path,
    out: Path,
    name: str = "ensemble",
    metric: str | None = None,
) -> ModelCard:
    """Check the members agree, derive weights, write the ensemble card and return it."""
    from conveyor.trainer.evaluate import load_split
    from conveyor.trainer.predictor import load_predictor

    if method not in METHODS:
        raise ValueError(f"unknown ensemble method {method!r}; use {', '.join(METHODS)}")
    if not members:
        raise ValueError("an ensemble needs at least one member (--models DIR [DIR ...])")
    meta = artifacts.read_metadata(data_dir)
    cards = [artifacts.read_card(member) for member in members]
    for member, card in zip(members, cards, strict=True):
        if (card.dataset.task, card.dataset.feature_shape, card.dataset.classes) != (
            meta.task, meta.feature_shape, meta.classes,
        ):
            raise ValueError(f"member {member} was trained on different data than {data_dir}")
    if method == "hardVoting" and meta.task != "classification":
        raise ValueError(
            "hardVoting combines predicted classes, so it needs a classification task; "
            "use softVoting or weightedAverage for regression"
        )
    config = cards[0].config
    metric = metric or config.task.metric
    if config.data.entrypoint:  # the user's dataset: no prepared split, its own validation split
        from conveyor.trainer.data.datasets import load_whole

        x_val, y_val = load_whole(config, "validation")
    else:
        x_val, y_val = load_split(data_dir, "validation")
    weights: list[float] = []
    if method == "weightedAverage":
        scores = []
        for member, card in zip(members, cards, strict=True):
            if metric not in card.metrics:
                output = load_predictor(member).predict(x_val)
                values = metrics.compute_metrics(meta.task, y_val, output, meta.num_classes or None)
                card.metrics.update(values)
            if metric not in card.metrics:
                raise ValueError(f"member {member} has no validation {metric!r} to weight it by")
            scores.append(float(card.metrics[metric]))
        weights = score_weights(scores, metric)
    ensemble = ModelCard(
        kind="ensemble",
        name=name,
        config=config,
        dataset=meta,
        members=[member_reference(member, out) for member in members],
        weights=weights,
        method=method,
    )
    out.mkdir(parents=True, exist_ok=True)
    artifacts.write_card(out, ensemble)  # written first so the predictor can load the ensemble itself
    output = load_predictor(out).predict(x_val)
    values = metrics.compute_metrics(meta.task, y_val, output, meta.num_classes or None)
    if meta.task == "classification" and "logLoss" in values:
        values["loss"] = values["logLoss"]
    elif "mse" in values:
        values["loss"] = values["mse"]
    ensemble.metrics = {k: float(np.round(v, 6)) for k, v in values.items()}
    artifacts.write_card(out, ensemble)
    return ensemble

"""What Conveyor tells user code about the model it should build (`ModelInfo`, the second argument of
`spec.model.entrypoint`). A plain dataclass: the SDK imports nothing beyond the standard library."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModelInfo:
    """The data a model is built for.

    `input_shape` is one sample's shape (no batch dimension); `num_outputs` is the number of classes
    (classification: the model returns one logit per class) or 1 (regression: one value per sample);
    `classes` are the class names, index = label, or None for regression."""

    task: Literal["classification", "regression"]
    input_shape: tuple[int, ...]
    num_outputs: int
    classes: tuple[str, ...] | None

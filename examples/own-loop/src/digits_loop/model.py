"""The network: `build(options, info)`, the `spec.model.entrypoint` signature, so the loop and
Conveyor's fallback rebuild (serving a model that did not export) make the same module."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from conveyor.sdk import ModelInfo


def build(options: dict[str, Any], info: ModelInfo) -> nn.Module:
    hidden = int(options.get("hidden", 128))
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(info.input_shape), hidden),
        nn.ReLU(),
        nn.Dropout(float(options.get("dropout", 0.0))),
        nn.Linear(hidden, info.num_outputs),
    )

"""A small residual MLP, built for whatever data the pipeline trains on.

Conveyor calls `build(options, info)`: `options` is `spec.model.options` with the trial's values
(`model.options.width` and `model.options.blocks` are tuned), `info` says what the data looks like
(`info.input_shape`, `info.num_outputs`: classes, or 1 for a regression). The model returns logits
`[batch, num_outputs]`; Conveyor's loop trains it (AMP, early stopping, checkpoints), exports it, and
evaluation, the ensemble and int8 serving rebuild it from this same function.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class Block(nn.Module):
    """x + MLP(LayerNorm(x)): the residual keeps deep stacks trainable."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, 2 * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualMLP(nn.Module):
    def __init__(self, inputs: int, width: int, blocks: int, dropout: float, outputs: int) -> None:
        super().__init__()
        self.embed = nn.Linear(inputs, width)
        self.blocks = nn.Sequential(*(Block(width, dropout) for _ in range(blocks)))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x.flatten(1))))


def build(options: dict[str, Any], info: Any) -> nn.Module:
    return ResidualMLP(
        inputs=math.prod(info.input_shape),
        width=int(options.get("width", 128)),
        blocks=int(options.get("blocks", 2)),
        dropout=float(options.get("dropout", 0.1)),
        outputs=info.num_outputs,
    )

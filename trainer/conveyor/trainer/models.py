"""The model zoo: small, configurable networks sized from the prepared dataset.

`build_model(spec, meta)` is the one entry point that training, evaluation, ensembling and serving
share, so a model directory (config + metadata + weights) always rebuilds the very same network — a
user's network too (`model.entrypoint`, called as `function(options, info)`).
Every model takes a float tensor shaped `[batch, *meta.feature_shape]` and returns logits
`[batch, classes]` (classification) or `[batch, 1]` (regression).

How each architecture sees its input:

- `mlp`: the flattened input, `layers` hidden layers of `hiddenSize`.
- `cnn`: images `[C, H, W]` through `layers` conv blocks (conv-BN-ReLU, 2x2 max-pool while the map is
  at least 4 wide); tabular `[F]` as a one-channel 1-D signal. Channels start at `hiddenSize / 4`
  and double per block (capped at `hiddenSize`).
- `resnet`: images through a conv stem and `layers` basic residual blocks (stride 2 every other
  block); tabular through pre-norm residual MLP blocks.
- `lstm`: a sequence — image rows (`H` steps of `C*W` values) or features (`F` steps of 1 value);
  the last layer's final hidden state feeds the head.
- `transformer`: tokens — image rows or one token per feature (each with its own learned embedding,
  as in FT-Transformer) — plus a learned position embedding, a pre-norm encoder, and CLS or mean
  pooling (`model.pooling`).

Model math only: nothing here knows about devices, precision or parallelism.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from conveyor.trainer.artifacts import DatasetMetadata
from conveyor.trainer.config import ConfigError, ModelSpec


def build_model(spec: ModelSpec, meta: DatasetMetadata) -> nn.Module:
    """The network `spec` describes, with input and output sized from the dataset metadata: the zoo's,
    or the one `spec.entrypoint` returns (`user_model`).

    Regression networks learn the standardised target and undo the standardisation in a fixed output
    layer (`TargetScale`), so every caller gets predictions in target units. A user's network is
    wrapped the same way: it learns the standardised target as a zoo network does (the loss is the MSE
    of the standardised target either way), and training, evaluation and serving, which all build the
    model here, agree. Data from `data.entrypoint` is not standardised (its metadata says `none`), so
    there the network predicts target units directly.
    """
    net = user_model(spec, meta) if spec.entrypoint else build_network(spec, meta)
    stats = meta.target_normalization
    if meta.task == "regression" and stats.method != "none" and stats.shift:
        return TargetScale(net, stats.shift[0], stats.scale[0])
    return net


def build_network(spec: ModelSpec, meta: DatasetMetadata) -> nn.Module:
    shape = tuple(meta.feature_shape)
    out = meta.output_size
    if spec.architecture == "mlp":
        return MLP(math.prod(shape), spec.hidden_size, spec.layers, spec.dropout, out)
    if spec.architecture == "cnn":
        return CNN(shape, spec.hidden_size, spec.layers, spec.dropout, out)
    if spec.architecture == "resnet":
        if len(shape) == 3:
            return ResNet(shape, spec.hidden_size, spec.layers, spec.dropout, out)
        return ResidualMLP(math.prod(shape), spec.hidden_size, spec.layers, spec.dropout, out)
    if spec.architecture == "lstm":
        steps, width = sequence_shape(shape)
        return LSTMClassifier(steps, width, spec.hidden_size, spec.layers, spec.dropout, out)
    if spec.architecture == "transformer":
        return Transformer(shape, spec.hidden_size, spec.layers, spec.heads, spec.dropout, spec.pooling, out)
    raise ValueError(f"unknown architecture {spec.architecture!r}; use mlp, cnn, resnet, lstm or transformer")


def user_model(spec: ModelSpec, meta: DatasetMetadata) -> nn.Module:
    """`spec.entrypoint(options, info)`: the user's network for this data (`model.entrypoint`)."""
    from conveyor.sdk.info import ModelInfo
    from conveyor.trainer import usercode

    assert spec.entrypoint is not None
    function = usercode.entrypoint(spec.entrypoint, "model.entrypoint", ("options", "info"))
    info = ModelInfo(
        task=meta.task,
        input_shape=tuple(meta.feature_shape),
        num_outputs=meta.output_size,
        classes=tuple(meta.classes) if meta.task == "classification" else None,
    )
    model = function(dict(spec.options), info)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.entrypoint: {spec.entrypoint} returned {type(model).__name__}, not a torch.nn.Module; "
            "return the network (an nn.Module) it builds"
        )
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sequence_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(steps, values per step): image rows for `[C, H, W]`, one feature per step for `[F]`."""
    if len(shape) == 3:
        channels, height, width = shape
        return height, channels * width
    return math.prod(shape), 1


def as_sequence(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H, C*W]; [B, F] -> [B, F, 1]."""
    if x.dim() == 4:
        return x.permute(0, 2, 1, 3).flatten(2)
    return x.flatten(1).unsqueeze(-1)


def head(width: int, hidden: int, dropout: float, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out)
    )


class TargetScale(nn.Module):
    """`net(x) * scale + shift`: maps standardised regression outputs back to target units."""

    def __init__(self, net: nn.Module, shift: float, scale: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale + self.shift


class MLP(nn.Module):
    def __init__(self, inputs: int, hidden: int, layers: int, dropout: float, out: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Flatten()]
        width = inputs
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, out))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    def __init__(self, shape: tuple[int, ...], hidden: int, layers: int, dropout: float, out: int) -> None:
        super().__init__()
        image = len(shape) == 3
        conv, norm, pool = (
            (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if image else (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d)
        )
        channels = shape[0] if image else 1
        size = min(shape[1:]) if image else math.prod(shape)
        self.image = image
        blocks: list[nn.Module] = []
        width = max(8, hidden // 4)
        for _ in range(layers):
            blocks += [conv(channels, width, 3, padding=1, bias=False), norm(width), nn.ReLU()]
            if size >= 4:
                blocks.append(pool(2))
                size //= 2
            channels, width = width, min(width * 2, max(hidden, 8))
        self.features = nn.Sequential(*blocks)
        # Keep a little spatial layout (2x2) rather than averaging it all away: small images need it.
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(2) if image else nn.AdaptiveAvgPool1d(2)
        self.head = head(channels * (4 if image else 2), hidden, dropout, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.image:
            x = x.flatten(1).unsqueeze(1)
        return self.head(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(),
            nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.skip = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """A small ResNet for small images: stem, `layers` basic blocks, global average pooling."""

    def __init__(self, shape: tuple[int, ...], hidden: int, layers: int, dropout: float, out: int) -> None:
        super().__init__()
        width = max(8, hidden // 4)
        self.stem = nn.Sequential(
            nn.Conv2d(shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        size = min(shape[1:])
        for index in range(layers):
            stride = 2 if index % 2 == 1 and size >= 4 else 1
            size //= stride
            wider = min(width * stride, max(hidden, 8))
            blocks.append(BasicBlock(width, wider, stride))
            width = wider
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class ResidualMLP(nn.Module):
    """Pre-norm residual MLP blocks for tabular data (LayerNorm: safe with any batch size)."""

    def __init__(self, inputs: int, hidden: int, layers: int, dropout: float, out: int) -> None:
        super().__init__()
        self.embed = nn.Linear(inputs, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(hidden),
                nn.Linear(hidden, 2 * hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(2 * hidden, hidden),
            )
            for _ in range(layers)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class LSTMClassifier(nn.Module):
    def __init__(self, steps: int, width: int, hidden: int, layers: int, dropout: float, out: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            width, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(as_sequence(x))
        return self.out(hidden[-1])


class FeatureTokens(nn.Module):
    """One token per scalar feature: value * w_f + b_f, each feature with its own embedding."""

    def __init__(self, features: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features, width) / math.sqrt(width))
        self.bias = nn.Parameter(torch.zeros(features, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).unsqueeze(-1) * self.weight + self.bias


class Transformer(nn.Module):
    def __init__(
        self,
        shape: tuple[int, ...],
        hidden: int,
        layers: int,
        heads: int,
        dropout: float,
        pooling: str,
        out: int,
    ) -> None:
        super().__init__()
        steps, width = sequence_shape(shape)
        self.tokens: nn.Module = nn.Linear(width, hidden) if len(shape) == 3 else FeatureTokens(steps, hidden)
        self.image = len(shape) == 3
        self.pooling = pooling
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        self.position = nn.Parameter(torch.randn(1, steps + 1, hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(as_sequence(x) if self.image else x)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.position
        encoded = self.norm(self.encoder(tokens))
        pooled = encoded[:, 0] if self.pooling == "cls" else encoded[:, 1:].mean(dim=1)
        return self.out(pooled)

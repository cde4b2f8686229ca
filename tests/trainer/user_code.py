"""User code as a pipeline would name it ("tests.trainer.user_code:<function>"): datasets, models, and
the mistakes preflight must catch. Importable from the repository root, so torchrun workers (and their
DataLoader workers) find it as they would find a user's `spec.code.path`.

Sample i of every split is deterministic: 4 features, class i % 3 marked by a +2 bump on feature
i % 3, and, in the last feature, the sample's id (so tests can see which rank trained on which sample).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from conveyor.sdk.info import ModelInfo

SPLITS = {"train": (0, 203), "validation": (1000, 61), "test": (2000, 59)}
RECORD_ENV = "USER_CODE_RECORD"  # a directory: recording_model writes the ids each rank trained on


def sample(index: int) -> tuple[torch.Tensor, int]:
    label = index % 3
    x = torch.randn(5, generator=torch.Generator().manual_seed(index)) * 0.5
    x[label] += 2.0
    x[4] = float(index)
    return x, label


class Table(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, offset: int, size: int) -> None:
        self.offset, self.size = offset, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return sample(self.offset + index)


class Stream(IterableDataset[tuple[torch.Tensor, int]]):
    """No __len__: Conveyor counts it once. Records the epochs it was told (`set_epoch`)."""

    def __init__(self, offset: int, size: int) -> None:
        self.offset, self.size, self.epochs_seen = offset, size, [0]

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for index in range(self.size):
            yield sample(self.offset + index)


class NamedTable(Table):
    classes = ("low", "mid", "high")


def table(split: str) -> Table:
    return Table(*SPLITS[split])


def stream(split: str) -> Stream:
    return Stream(*SPLITS[split])


def named_table(split: str) -> NamedTable:
    return NamedTable(*SPLITS[split])


def regression(split: str) -> Dataset[Any]:
    """y = 50 + 10 * (x0 - x1): in target units, far from 0 mean / 1 std."""
    offset, size = SPLITS[split]
    x = torch.randn(size, 5, generator=torch.Generator().manual_seed(offset))
    return torch.utils.data.TensorDataset(x, 50.0 + 10.0 * (x[:, 0] - x[:, 1]))


def mlp(options: dict[str, Any], info: ModelInfo) -> nn.Module:
    width = int(options.get("width", 16))
    features = int(torch.tensor(info.input_shape).prod())
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(features, width), nn.ReLU(), nn.Linear(width, info.num_outputs)
    )
    model.seen = (dict(options), info)  # type: ignore[assignment]
    return model


class Recording(nn.Module):
    """An MLP that, while training, appends the ids of each batch to $USER_CODE_RECORD/rank<RANK>."""

    def __init__(self, info: ModelInfo) -> None:
        super().__init__()
        self.net = mlp({}, info)
        self.log = (
            Path(os.environ[RECORD_ENV]) / f"rank{os.environ.get('RANK', '0')}"
            if RECORD_ENV in os.environ
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.log is not None:
            with self.log.open("a") as handle:
                handle.write(" ".join(str(int(i)) for i in x[:, -1].tolist()) + "\n")
        return self.net(x)


def recording_model(options: dict[str, Any], info: ModelInfo) -> nn.Module:
    return Recording(info)


# --- mistakes -------------------------------------------------------------------------------------


def not_a_module(options: dict[str, Any], info: ModelInfo) -> object:
    return "a string"


def wrong_outputs(options: dict[str, Any], info: ModelInfo) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(info.input_shape).prod()), 10))


def wrong_input(options: dict[str, Any], info: ModelInfo) -> nn.Module:
    return nn.Linear(7, info.num_outputs)


def too_many_parameters(options: dict[str, Any], info: ModelInfo, extra: int) -> nn.Module:
    return nn.Linear(1, 1)


def wrong_shape(split: str) -> Dataset[Any]:
    return torch.utils.data.TensorDataset(torch.zeros(10, 3, 2), torch.zeros(10, dtype=torch.long))


def float_labels(split: str) -> Dataset[Any]:
    return torch.utils.data.TensorDataset(torch.zeros(10, 5), torch.full((10,), 0.5))


def big_label(split: str) -> Dataset[Any]:
    return torch.utils.data.TensorDataset(torch.zeros(10, 5), torch.full((10,), 7, dtype=torch.long))


def not_pairs(split: str) -> Dataset[Any]:
    return torch.utils.data.TensorDataset(torch.zeros(10, 5))


def a_list(split: str) -> list[int]:
    return [1, 2, 3]

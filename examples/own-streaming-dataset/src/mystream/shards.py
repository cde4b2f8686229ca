"""A dataset that streams its rows from CSV shards, as data too big for memory would arrive.

Conveyor calls `load(split)` for "train", "validation" and "test" in every trial (and once in the
prepare workload, which only reads the shape, the classes and the labels). Each call returns a
`ShardStream`, a torch IterableDataset that reads its split's CSV files one row at a time: memory holds
one row, whatever the size of the data. Conveyor's loop shards the stream between training processes
and DataLoader workers (each takes every n-th row; the uneven tail is dropped so all take the same
number of steps) and tells it each epoch (`set_epoch`), which it uses to read the shards in a new order.

So the example runs anywhere without downloading anything, the shards are generated at first use,
deterministically from a seed, into $MYSTREAM_DIR (default: a directory in the system's temp dir):
accelerometer-like features of three activities. Each shard is written to a temporary file and renamed
into place, so processes that generate at the same time never read half a file.
"""

from __future__ import annotations

import csv
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import IterableDataset

CLASSES = ("idle", "walking", "running")
FEATURES = 12
SHARDS = {"train": 8, "validation": 2, "test": 2}
ROWS_PER_SHARD = 250
SEED = 7


def data_dir() -> Path:
    return Path(os.environ.get("MYSTREAM_DIR") or Path(tempfile.gettempdir()) / f"mystream-{SEED}")


def shard_paths(split: str) -> list[Path]:
    return [data_dir() / f"{split}-{index:03d}.csv" for index in range(SHARDS[split])]


def generate(path: Path, seed: int) -> None:
    """One shard of rows `label, f0..f11`: each activity has its own mean level and rhythm."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        for _ in range(ROWS_PER_SHARD):
            label = rng.randrange(len(CLASSES))
            energy, rhythm = 0.2 + 0.5 * label, 1.0 + 0.8 * label
            phase = rng.uniform(0, 6.28)
            row = [
                energy * (1 + 0.3 * ((i * rhythm + phase) % 2 - 1)) + rng.gauss(0, 0.6)
                for i in range(FEATURES)
            ]
            writer.writerow([label, *(f"{value:.5f}" for value in row)])
    os.replace(partial, path)


def ensure(split: str) -> list[Path]:
    """The split's shard files, generated first if missing (the seed makes every process write the same)."""
    paths = shard_paths(split)
    for index, path in enumerate(paths):
        if not path.exists():
            generate(path, SEED * 1000 + 100 * list(SHARDS).index(split) + index)
    return paths


class ShardStream(IterableDataset):
    """The rows of one split's shards, one at a time: (features float32 [12], class index)."""

    classes = CLASSES

    def __init__(self, split: str) -> None:
        self.split, self.epoch = split, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        paths = ensure(self.split)
        if self.split == "train":  # a new shard order every epoch, the same in every process
            random.Random(SEED + self.epoch).shuffle(paths)
        for path in paths:
            with path.open(newline="") as handle:
                for label, *values in csv.reader(handle):
                    yield torch.tensor([float(v) for v in values]), int(label)


def load(split: str) -> ShardStream:
    return ShardStream(split)

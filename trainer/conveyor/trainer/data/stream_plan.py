"""Streaming's decisions, made without reading any data: whether a source streams at all, where each
split's file is and what its columns are called, which split a row goes to, how many rows a row group
and a unit hold, which units a consumer reads and how many batches that makes.

Small and pure (numpy and the environment only), so the rules every reader and writer must agree on
(every rank the same number of units, a row's split independent of the block it was read in) are in
one place and tested without Parquet or torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from conveyor.trainer.data import DataError

IN_MEMORY_ENV = "CONVEYOR_IN_MEMORY_BYTES"
DEFAULT_IN_MEMORY_BYTES = 2 << 30
ROW_GROUP_BYTES = 4 << 20  # decoded features per row group: the most a reader holds of one group
MAX_ROW_GROUP_ROWS = 65536
MIN_UNITS_PER_CONSUMER = 4  # small splits get smaller units, so that no rank or worker goes without
X_COLUMN, Y_COLUMN, PATH_COLUMN = "x", "y", "path"

T = TypeVar("T")


def in_memory_bytes() -> int:
    """The largest source prepared in memory: $CONVEYOR_IN_MEMORY_BYTES, default 2 GiB (0 streams all)."""
    value = os.environ.get(IN_MEMORY_ENV, str(DEFAULT_IN_MEMORY_BYTES))
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise DataError(
            f"{IN_MEMORY_ENV}={value!r} is not a number of bytes; set it to an integer such as {2 << 30} "
            "(0 streams every file source)"
        )
    return limit


def split_file(data_dir: Path, split: str) -> Path:
    return data_dir / f"{split}.parquet"


def shard(items: Sequence[T], rank: int, world_size: int, worker: int = 0, workers: int = 1) -> list[T]:
    """The items of consumer (rank, worker) among world_size x workers: every consumer takes every
    (world_size * workers)-th item and all take the same number, so the uneven tail is dropped."""
    if world_size < 1 or workers < 1 or not 0 <= rank < world_size or not 0 <= worker < workers:
        raise ValueError(f"no consumer rank {rank} of {world_size}, worker {worker} of {workers}")
    consumers = world_size * workers
    each = len(items) // consumers
    return list(items[rank * workers + worker :: consumers][:each])


_GOLDEN = 0x9E3779B97F4A7C15


def split_codes(rows: np.ndarray, seed: int, validation: float, test: float) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) per row number: a splitmix64 hash of (seed, row), so a
    row's split depends on nothing else (not on the block it was read in)."""
    key = np.uint64((seed * _GOLDEN + 0x632BE59BD9B4E019) % (1 << 64))
    z = (rows.astype(np.uint64) ^ key) + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(u < test, 2, np.where(u < test + validation, 1, 0)).astype(np.int8)


def group_rows_for(row_bytes: int) -> int:
    return max(1, min(MAX_ROW_GROUP_ROWS, ROW_GROUP_BYTES // max(1, row_bytes)))


def unit_rows(rows: int, group_rows: int, consumers: int) -> int:
    """Rows per unit: a whole row group, halved until every consumer gets MIN_UNITS_PER_CONSUMER."""
    size = max(1, group_rows)
    while size > 1 and rows // size < MIN_UNITS_PER_CONSUMER * consumers:
        size = math.ceil(size / 2)
    return size


def batch_count(samples: int, batch_size: int) -> int:
    """As `train.batch_count`: a trailing batch of one row is dropped (batch norm cannot train on it)."""
    steps = math.ceil(samples / batch_size)
    return steps - 1 if steps > 1 and samples % batch_size == 1 else steps

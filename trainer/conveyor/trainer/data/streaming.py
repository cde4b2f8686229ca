"""Data larger than memory: prepared splits as Parquet, written in one pass and read a batch at a time.

A source too big to hold in memory (the threshold is `CONVEYOR_IN_MEMORY_BYTES`, see
`conveyor.trainer.data.prepare`) is prepared by `prepare_streaming` in one pass into
`<split>.parquet` files plus `metadata.json` (`storage: parquet`). The parts, by what each decides:

- `stream_plan`: the pure rules — stream or not, file names and columns, a row's split (a hash of
  (split seed, row number)), row group and unit sizes, `shard`ing units across consumers;
- `stream_prepare` (with `stream_checks`): the one pass over the source, and what can be wrong with it;
- `stream_read`: `SplitFile`, any row range of a split decoded, normalised and encoded; `iter_batches`
  and `load_split`;
- this module: training's epochs over the train split.

Training reads the train split through `StreamingDataset`, an IterableDataset over fixed-size row ranges
("units", a row group each unless the split is small): each epoch permutes the units with a seed of
(seed, epoch), `shard`s them across ranks x DataLoader workers (every consumer gets the same number, the
uneven tail dropped, so every rank runs the same number of steps) and shuffles rows within windows of
`MIX_UNITS` units. The order depends only on the seed and the epoch, so a resumed run and a rerun see the
same batches. Validation (`load_streamed`) and evaluation (`iter_batches`) read their split in file
order; only labels and model outputs are held whole.

The names callers used before the split (`in_memory_bytes`, `split_file`, `shard`, `prepare_streaming`,
`SplitFile`, `iter_batches`, `load_split`) are importable from here as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from conveyor.trainer.artifacts import DatasetMetadata
from conveyor.trainer.data import DataError
from conveyor.trainer.data.stream_plan import batch_count, in_memory_bytes, shard, split_file, unit_rows
from conveyor.trainer.data.stream_prepare import prepare_streaming
from conveyor.trainer.data.stream_read import SplitFile, iter_batches, load_split
from conveyor.trainer.validation import output_metrics

if TYPE_CHECKING:
    from conveyor.trainer import distributed
    from conveyor.trainer.config import TrainerConfig

__all__ = [
    "MIX_UNITS",
    "PREFETCH_BATCHES",
    "VALIDATION_ROWS",
    "SplitFile",
    "StreamingBatches",
    "StreamingDataset",
    "gather",
    "in_memory_bytes",
    "iter_batches",
    "load_split",
    "load_streamed",
    "loader_workers",
    "prepare_streaming",
    "shard",
    "split_file",
]

PREFETCH_BATCHES = 4  # per DataLoader worker
MIX_UNITS = 4  # units shuffled together: a batch mixes rows from this many places in the file
VALIDATION_ROWS = 1024  # rows per forward pass of validation, as `validation.validate`

Augment = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StreamingDataset(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """One rank's batches of the train split as (x, y) CPU tensors; its DataLoader workers split the
    rank's units. Every consumer reads the same number of rows, so `len()` (the batches of one
    epoch on this rank) is the same on every rank."""

    def __init__(
        self, source: SplitFile, batch_size: int, rank: int, world_size: int, workers: int, seed: int
    ) -> None:
        self.source, self.batch_size, self.rank, self.world_size = source, batch_size, rank, world_size
        self.workers, self.seed, self.epoch = max(1, workers), seed, 0
        consumers = world_size * self.workers
        self.unit = unit_rows(source.rows, source.group_rows, consumers)
        self.units = source.rows // self.unit  # a final partial unit (< unit rows) is never read
        self.units_each = self.units // consumers
        if self.units_each == 0:
            raise DataError(
                f"the train split has {source.rows} rows, too few for {world_size} processes; add rows"
            )
        self.samples_per_worker = self.units_each * self.unit
        self.batches_per_worker = batch_count(self.samples_per_worker, batch_size)

    def __len__(self) -> int:
        return self.batches_per_worker * self.workers

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, worker: int) -> list[int]:
        """The units of (this rank, `worker`) this epoch: a permutation seeded by (seed, epoch), sharded."""
        permutation = np.random.default_rng([self.seed, self.epoch]).permutation(self.units)
        return shard([int(u) for u in permutation], self.rank, self.world_size, worker, self.workers)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"built for {self.workers} DataLoader workers, iterated by {info.num_workers}")
        units = self.order(worker)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        size, left = self.batch_size, self.batches_per_worker
        carry: list[tuple[np.ndarray, np.ndarray]] = []
        for begin in range(0, len(units), MIX_UNITS):
            reads = [
                self.source.read(u * self.unit, (u + 1) * self.unit, normalised=False)
                for u in units[begin : begin + MIX_UNITS]
            ]
            window = carry + reads
            starts = np.cumsum([0, *(len(w[1]) for w in window)])
            order = rng.permutation(int(starts[-1]))
            full = (len(order) // size) * size
            for start in range(0, full, size):
                if left == 0:
                    return
                left -= 1
                x, y = gather(window, starts, order[start : start + size])
                yield torch.from_numpy(self.source.normalise(x)), torch.from_numpy(y)
            carry = [gather(window, starts, order[full:])]
        if left > 0 and carry and len(carry[0][1]):
            yield torch.from_numpy(self.source.normalise(carry[0][0])), torch.from_numpy(carry[0][1])


def gather(
    window: list[tuple[np.ndarray, np.ndarray]], starts: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows `rows` of the window's parts (numbered through, part k from starts[k]) as new arrays:
    each row is copied once, from the file's buffers straight into the batch. The batch holds them
    in row order: a batch is a set, and reading each part in order is cache-friendly."""
    rows = np.sort(rows)
    cuts = np.searchsorted(rows, starts)
    x = np.empty((len(rows), *window[0][0].shape[1:]), np.float32)
    y = np.empty(len(rows), window[0][1].dtype)
    for k, (part_x, part_y) in enumerate(window):
        local = rows[cuts[k] : cuts[k + 1]] - starts[k]
        np.take(part_x, local, axis=0, out=x[cuts[k] : cuts[k + 1]])
        np.take(part_y, local, out=y[cuts[k] : cuts[k + 1]])
    return x, y


def loader_workers(world_size: int) -> int:
    """DataLoader workers per rank, as `train.LoaderBatches` picks them."""
    return min(4, max(1, (os.cpu_count() or 2) // max(1, world_size) - 1))


class StreamingBatches:
    """What the training loop iterates: this rank's streamed batches of the train split, on the device."""

    def __init__(
        self,
        source: SplitFile,
        batch_size: int,
        ctx: distributed.Context,
        seed: int,
        augment: Augment | None,
        workers: int | None = None,
    ) -> None:
        workers = loader_workers(ctx.world_size) if workers is None else workers
        self.dataset = StreamingDataset(source, batch_size, ctx.rank, ctx.world_size, workers, seed)
        # Workers start per epoch (not persistent), so each one sees the epoch it shuffles for. They
        # run PREFETCH_BATCHES ahead (batches are small), so a worker scheduled late on a busy
        # machine does not stall the training step.
        self.loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.dataset.workers,
            pin_memory=ctx.device.type == "cuda",
            prefetch_factor=PREFETCH_BATCHES,
        )
        self.ctx, self.augment = ctx, augment
        self.samples_per_epoch = self.dataset.samples_per_worker * self.dataset.workers
        self.steps = len(self.dataset)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.dataset.set_epoch(epoch)
        for xb, yb in self.loader:
            xb = xb.to(self.ctx.device, non_blocking=True)
            yield (self.augment(xb) if self.augment else xb), yb.to(self.ctx.device, non_blocking=True)


def load_streamed(
    config: TrainerConfig,
    meta: DatasetMetadata,
    data_dir: Path,
    ctx: distributed.Context,
    augment: Augment | None,
) -> tuple[StreamingBatches, Callable[[nn.Module, LossFn, Callable[[], Any]], dict[str, float]]]:
    """`train.load_data` for a streamed dataset: the train batches, and rank 0's validation, which
    reads the validation split in file order and holds only its labels and the model's outputs."""
    seed = config.data.split.seed + config.training.seed
    batches = StreamingBatches(
        SplitFile(data_dir, "train", meta), config.training.batch_size, ctx, seed, augment
    )
    source = SplitFile(data_dir, "validation", meta)
    labels = torch.from_numpy(source.all_labels()).to(ctx.device)
    chunk = max(config.training.batch_size, VALIDATION_ROWS)

    @torch.no_grad()
    def validate(model: nn.Module, loss_fn: LossFn, autocast: Callable[[], Any]) -> dict[str, float]:
        was_training = model.training
        model.eval()
        outputs = []
        with autocast():
            for start in range(0, source.rows, chunk):
                x, _ = source.read(start, min(start + chunk, source.rows))
                outputs.append(model(torch.from_numpy(x).to(ctx.device)).float())
        model.train(was_training)
        return output_metrics(meta, torch.cat(outputs), labels, loss_fn)

    return batches, validate

"""The user's dataset (`data.entrypoint`) inside Conveyor's own loop.

`data.entrypoint` names `function(split)`, called for "train", "validation" and "test", that returns a
torch `Dataset` (map-style: `__getitem__` + `__len__`) or `IterableDataset` of `(features, target)`
pairs: features anything `torch.as_tensor` takes, shaped like `data.inputShape`; the target an int class
index (classification) or a number (regression). Nothing is prepared from it but `metadata.json`
(`describe`): the data stays the user's, read by every trial itself, and is not normalised.

Under DDP every rank must take the same number of steps, or the ranks that run out first leave the
others waiting in an all-reduce forever. So:

- a map-style dataset goes through a `DistributedSampler` (`drop_last`, seeded with `data.split.seed`
  and `set_epoch`, so each epoch is a new disjoint shard per rank of equal size);
- an iterable is sharded by `shard_stream`: item i goes to consumer i mod (ranks x DataLoader workers),
  and the last incomplete round is dropped, so every consumer (and so every rank) gets the same count.
  (`conveyor.trainer.data.streaming.shard` does the same for a sequence; a stream has no length to
  slice by, so this one reads ahead one round.) Every consumer reads the whole stream and keeps its
  share. An iterable whose class has `set_epoch(epoch)` is told the epoch before each pass.

Batches come through a DataLoader (workers, pinned memory on a GPU). An iterable without `__len__` is
counted once at start (the learning-rate schedule needs the steps of an epoch); give it `__len__` to
skip that pass. Rank 0 validates on the whole validation split a batch at a time: only the outputs and
targets are held whole, never the inputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, get_worker_info

from conveyor.trainer import usercode
from conveyor.trainer.artifacts import METADATA_FILE, DatasetMetadata, read_metadata, write_json_atomic
from conveyor.trainer.config import ConfigError, TrainerConfig
from conveyor.trainer.data import DataError

if TYPE_CHECKING:
    from conveyor.trainer import distributed

FIELD = "data.entrypoint"
VALIDATION_BATCH = 1024
T = TypeVar("T")


# --- the user's function ------------------------------------------------------------------------


def load(config: TrainerConfig, split: str) -> Dataset[Any]:
    """`data.entrypoint(split)`, checked to be a torch Dataset (with a length) or IterableDataset."""
    reference = config.data.entrypoint
    if reference is None:
        raise ConfigError(f"{FIELD} is not set")
    function = usercode.entrypoint(reference, FIELD, ("split",))
    dataset = function(split)
    if not isinstance(dataset, Dataset):
        raise ConfigError(
            f"{FIELD}: {reference}({split!r}) returned {type(dataset).__name__}, not a torch Dataset or "
            "IterableDataset; return one (e.g. torch.utils.data.TensorDataset(x, y))"
        )
    if not isinstance(dataset, IterableDataset) and not isinstance(dataset, Sized):
        raise ConfigError(
            f"{FIELD}: {reference}({split!r}) returned a map-style {type(dataset).__name__} without "
            "__len__; give it __len__, or make it an IterableDataset"
        )
    return dataset


def length(dataset: Dataset[Any]) -> int | None:
    """len(dataset), or None for an iterable that has none."""
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def first_sample(dataset: Dataset[Any], split: str = "train") -> Any:
    if isinstance(dataset, IterableDataset):
        for sample in dataset:
            return sample
    elif length(dataset):
        return dataset[0]
    raise DataError(f"{FIELD}: the {split} split is empty; it must yield (features, target) pairs")


def unpack(sample: Any) -> tuple[torch.Tensor, Any]:
    """(features as a float tensor, the raw target) of one sample, or a ConfigError saying what it is."""
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        kind = f"a {len(sample)}-tuple" if isinstance(sample, (tuple, list)) else type(sample).__name__
        raise ConfigError(f"{FIELD}: a sample is {kind}, not a (features, target) pair; yield (x, y)")
    features, target = sample
    try:
        x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"{FIELD}: a sample's features ({type(features).__name__}) are not a tensor of numbers: {error}"
        ) from None
    return x.float(), target


def target_value(target: Any, task: str) -> int | float:
    """The target as an int class index (classification) or a float (regression); ConfigError if it is
    neither what the task needs."""
    value = target
    if isinstance(value, (torch.Tensor, np.ndarray)):
        count = value.size if isinstance(value, np.ndarray) else value.numel()
        if count != 1:
            raise ConfigError(
                f"{FIELD}: a sample's target has shape {list(value.shape)}; it must be one value "
                "(a class index or a number)"
            )
        value = value.reshape(()).item()
    elif isinstance(value, np.generic):
        value = value.item()
    if task == "classification":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"{FIELD}: task.type is classification but a target is {value!r} "
                f"({type(value).__name__}); yield the int class index (0..classes-1) — or set "
                "task.type: regression"
            )
        if value < 0:
            raise ConfigError(f"{FIELD}: a target is {value}; class indices run from 0 to classes-1")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{FIELD}: task.type is regression but a target is {value!r} ({type(value).__name__}); "
            "yield a number"
        )
    return float(value)


# --- metadata (the prepare workload) --------------------------------------------------------------


def prepare(config: TrainerConfig, out: Path) -> DatasetMetadata:
    """Write `metadata.json` for the user's dataset into `out` unless it is there; return it."""
    if (out / METADATA_FILE).is_file():
        return read_metadata(out)
    meta = describe(config)
    write_json_atomic(out / METADATA_FILE, meta.model_dump(mode="json"))
    return meta


def describe(config: TrainerConfig, train: Dataset[Any] | None = None) -> DatasetMetadata:
    """The metadata of the user's dataset (`train`: its train split, if already loaded): shape from
    `data.inputShape` or the first training sample, classes from `data.classes`, the dataset's `classes`
    attribute or the labels seen in the train split, sizes where the splits have a length; no
    normalisation."""
    task = config.task.type
    train = load(config, "train") if train is None else train
    x, target = unpack(first_sample(train))
    target_value(target, task)
    shape = list(config.data.input_shape or x.shape)
    if list(x.shape) != shape:
        raise ConfigError(
            f"data.inputShape is {shape} but the first training sample's features have shape "
            f"{list(x.shape)}; fix data.inputShape or the dataset"
        )
    classes: list[str] = []
    if task == "classification":
        classes = class_names(config, train)
    sizes = {}
    for split in ("train", "validation", "test"):
        size = length(train if split == "train" else load(config, split))
        if size is not None:
            sizes[split] = size
    return DatasetMetadata(
        task=task,
        source=f"entrypoint://{config.data.entrypoint}",
        feature_shape=shape,
        input_kind="image" if len(shape) == 3 else "tabular",
        classes=classes,
        sizes=sizes,
    )


def class_names(config: TrainerConfig, train: Dataset[Any]) -> list[str]:
    if config.data.classes:
        return list(config.data.classes)
    declared = getattr(train, "classes", None)
    if declared is not None:
        names = [str(name) for name in declared]
        if len(names) < 2:
            raise ConfigError(f"{FIELD}: the dataset's `classes` attribute lists {names}; it needs 2 or more")
        return names
    seen = sorted({int(target_value(unpack(sample)[1], "classification")) for sample in samples(train)})
    if seen != list(range(len(seen))) or len(seen) < 2:
        raise ConfigError(
            f"{FIELD}: the train split's labels are {seen[:20]}, not 0..k-1 with k >= 2; list the class "
            "names in data.classes (index = label)"
        )
    return [str(label) for label in seen]


def samples(dataset: Dataset[Any]) -> Iterator[Any]:
    if isinstance(dataset, IterableDataset):
        yield from dataset
    else:
        for index in range(length(dataset) or 0):
            yield dataset[index]


# --- sharding ------------------------------------------------------------------------------------


def shard_stream(items: Iterable[T], consumer: int, consumers: int) -> Iterator[T]:
    """Every `consumers`-th item, starting at `consumer`, from complete rounds only: all consumers get
    the same number of items, whatever the stream's length (the uneven tail is dropped)."""
    if not 0 <= consumer < consumers:
        raise ValueError(f"no consumer {consumer} of {consumers}")
    round_: list[T] = []
    for item in items:
        round_.append(item)
        if len(round_) == consumers:
            yield round_[consumer]
            round_.clear()


class ShardedIterable(IterableDataset[Any]):
    """This rank's share of the user's iterable, split again between DataLoader workers."""

    def __init__(self, dataset: IterableDataset[Any], rank: int, world_size: int) -> None:
        self.dataset, self.rank, self.world_size, self.epoch = dataset, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        consumer = self.rank * workers + worker
        return shard_stream(self.dataset, consumer, self.world_size * workers)


# --- batches -------------------------------------------------------------------------------------


def loader_workers(world_size: int) -> int:
    """DataLoader workers per rank ($CONVEYOR_LOADER_WORKERS, else as `train.LoaderBatches`)."""
    if "CONVEYOR_LOADER_WORKERS" in os.environ:
        return max(0, int(os.environ["CONVEYOR_LOADER_WORKERS"]))
    return min(4, max(1, (os.cpu_count() or 2) // max(1, world_size) - 1))


def batch_converter(task: str) -> Callable[[Any], tuple[torch.Tensor, torch.Tensor]]:
    """Collates samples into (x float32 [B, *shape], y int64 | float32 [B]), in the loader's workers."""

    def collate(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(unpack(sample) for sample in batch), strict=True)
        values = [target_value(y, task) for y in ys]
        dtype = torch.int64 if task == "classification" else torch.float32
        return torch.stack(xs), torch.tensor(values, dtype=dtype)

    return collate


def trailing_one(samples: int, batch_size: int) -> bool:
    """A last batch of one row, dropped as `train.batch_count` drops it (batch norm cannot train on it)."""
    return samples > batch_size and samples % batch_size == 1


class DatasetBatches:
    """What the training loop iterates: this rank's batches of the user's train split, on the device.
    The same interface as `train.InMemoryBatches` (`steps`, `samples_per_epoch`, `epoch(n)`)."""

    def __init__(
        self,
        dataset: Dataset[Any],
        config: TrainerConfig,
        ctx: distributed.Context,
        augment: Callable[[torch.Tensor], torch.Tensor] | None,
        workers: int | None = None,
    ) -> None:
        batch_size = config.training.batch_size
        workers = loader_workers(ctx.world_size) if workers is None else workers
        consumers = ctx.world_size * max(1, workers)
        collate = batch_converter(config.task.type)
        pin = ctx.device.type == "cuda"
        self.ctx, self.augment = ctx, augment
        self.sampler: DistributedSampler[Any] | None = None
        self.sharded: ShardedIterable | None = None
        if isinstance(dataset, IterableDataset):
            total = length(dataset)
            if total is None:
                total = sum(1 for _ in dataset)
            each = total // consumers  # samples per (rank, worker)
            if each == 0:
                raise DataError(
                    f"{FIELD}: the train split has {total} samples, fewer than the {consumers} readers "
                    f"({ctx.world_size} processes x {max(1, workers)} loader workers); add samples"
                )
            drop = trailing_one(each, batch_size)
            self.sharded = ShardedIterable(dataset, ctx.rank, ctx.world_size)
            # Not persistent: each epoch's workers must see the epoch set on the dataset.
            self.loader = DataLoader(
                self.sharded,
                batch_size=batch_size,
                num_workers=workers,
                pin_memory=pin,
                collate_fn=collate,
                drop_last=drop,
            )
            self.samples_per_epoch = each * max(1, workers)
            per_worker = each // batch_size if drop else math.ceil(each / batch_size)
            self.steps = per_worker * max(1, workers)
        else:
            total = length(dataset) or 0
            if total < ctx.world_size:
                raise DataError(
                    f"{FIELD}: the train split has {total} samples, fewer than the {ctx.world_size} processes"
                )
            self.sampler = DistributedSampler(
                dataset,
                num_replicas=ctx.world_size,
                rank=ctx.rank,
                shuffle=True,
                seed=config.data.split.seed,
                drop_last=True,
            )
            each = len(self.sampler)
            self.loader = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=self.sampler,
                num_workers=workers,
                pin_memory=pin,
                persistent_workers=workers > 0,
                collate_fn=collate,
                drop_last=trailing_one(each, batch_size),
            )
            self.samples_per_epoch = each
            self.steps = len(self.loader)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.sharded is not None:
            self.sharded.set_epoch(epoch)
        device = self.ctx.device
        for xb, yb in self.loader:
            xb = xb.to(device, non_blocking=True)
            yield (self.augment(xb) if self.augment else xb), yb.to(device, non_blocking=True)


def batches(
    dataset: Iterable[Any] | Dataset[Any], task: str, batch_size: int, workers: int = 0, pin: bool = False
) -> DataLoader[Any]:
    """A whole split in order, `batch_size` samples at a time (validation and evaluation)."""
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        collate_fn=batch_converter(task),
    )


def load_whole(config: TrainerConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory as (x float32, y int64 | float32) arrays, for the one reader that needs it
    whole and small (the ensemble weighs its members on the validation split)."""
    xs, ys = [], []
    for xb, yb in batches(load(config, split), config.task.type, VALIDATION_BATCH):
        xs.append(xb.numpy())
        ys.append(yb.numpy())
    if not ys:
        raise DataError(f"{FIELD}: the {split} split is empty; it must yield (features, target) pairs")
    return np.concatenate(xs), np.concatenate(ys)


@torch.no_grad()
def outputs(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, autocast: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(model outputs, targets) over a whole split, gathered batch by batch; inputs are never held whole."""
    was_training = model.training
    model.eval()
    results, targets = [], []
    try:
        for xb, yb in loader:
            with autocast():
                results.append(model(xb.to(device, non_blocking=True)).float())
            targets.append(yb.to(device, non_blocking=True))
    finally:
        model.train(was_training)
    if not results:
        raise DataError(f"{FIELD}: the validation split is empty; it must yield at least one sample")
    return torch.cat(results), torch.cat(targets)


def validation_outputs(
    config: TrainerConfig, ctx: distributed.Context
) -> Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]:
    """How rank 0 gets (outputs, targets) on the user's validation split each epoch; the split is loaded
    on first use, so other ranks never call `data.entrypoint("validation")`."""
    loader: DataLoader[Any] | None = None

    def run(model: nn.Module, autocast: Any) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal loader
        if loader is None:
            dataset = load(config, "validation")
            batch = max(config.training.batch_size, VALIDATION_BATCH)
            loader = batches(dataset, config.task.type, batch, 0, ctx.device.type == "cuda")
        return outputs(model, loader, ctx.device, autocast)

    return run

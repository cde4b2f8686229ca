"""Distributed training: one loop, read top to bottom, the same under torchrun or plain python.

One process (world size 1; plain python works too)::

    python -m conveyor.trainer train --config config.json --data runs/digits/data --out runs/digits/model
    torchrun --standalone --nproc-per-node 1 --max-restarts 0 -m conveyor.trainer train --config ...

N processes on one machine (one per GPU, or N CPU processes on gloo)::

    torchrun --standalone --nproc-per-node 4 --max-restarts 0 -m conveyor.trainer train --config ...

Two nodes, as Conveyor's workloads run them (`conveyor.operator.workloads`; static rendezvous on node
0's address, run on each node)::

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank $NODE_RANK --master-addr $NODE0_HOST \\
        --master-port 29500 --max-restarts 0 \\
        -m conveyor.trainer train --config ... --data /shared/data --out /shared/model

Resuming is running the same command again: after every epoch rank 0 writes `checkpoints/latest.pt`
atomically, and a new run with the same model, optimizer, batch size, epochs, data shape and world size
(`training_state.run_fingerprint`) picks it up and continues after its epoch; a run that had finished
only rewrites its artifacts, and any other checkpoint is ignored (training starts fresh). Conveyor's engine
resumes this way, by starting a next attempt of the whole workload; torchrun itself restarts nothing
(`--max-restarts 0`), though workers it restarts under `--max-restarts N` resume the same way.

The backend is NCCL when the process has a GPU and gloo otherwise. Every rank holds the prepared
train split in memory (memory-mapped from the prepared file, so the processes of a node share its
pages; copied to the GPU when there is one) and each epoch takes a disjoint shard of a seeded
permutation, sliced into batches — no per-sample collation. Datasets from image folders, or larger than
`CONVEYOR_IN_MEMORY_BYTES` (default 2 GiB), go through a DataLoader with workers and pinned memory
(`CONVEYOR_DATA_PATH=memory|loader` forces one); sources prepared as Parquet, larger than memory,
stream from disk instead (`conveyor.trainer.data.streaming`). The user's own dataset (`data.entrypoint`)
goes through a DataLoader sharded across ranks (`conveyor.trainer.data.datasets`), and the user's own
model (`model.entrypoint`) is built by `build_model` like the zoo's. Rank 0 validates on the whole validation
split (the one rank that reads it) after every epoch and broadcasts the early-stopping decision, so all
ranks stop together; after an epoch the tuner judges (ASHA's rungs) it waits for the verdict before
training on (`progress.await_verdict`). Each process reports where its start-up went at its first step
(`startup`). What a checkpoint holds is `conveyor.trainer.training_state.TrainingState`. At the end
rank 0 writes the best epoch's weights, `model.json` and `result.json` (layout in
`conveyor.trainer.artifacts`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from conveyor.trainer import distributed, progress, startup
from conveyor.trainer.artifacts import (
    CHECKPOINT_DIR,
    LATEST_CHECKPOINT,
    WEIGHTS_FILE,
    DatasetMetadata,
    ModelCard,
    read_metadata,
    write_card,
)
from conveyor.trainer.config import OptimizerSpec, ScheduleSpec, TrainerConfig
from conveyor.trainer.data import DataError, datasets
from conveyor.trainer.data.datasets import DatasetBatches
from conveyor.trainer.data.prepare import load_split
from conveyor.trainer.export import export_model
from conveyor.trainer.models import build_model
from conveyor.trainer.training_state import EarlyStopping, TrainingState, run_fingerprint
from conveyor.trainer.validation import output_metrics, validate

if TYPE_CHECKING:  # imported when used: it loads pyarrow, which in-memory runs never need
    from conveyor.trainer.data.streaming import StreamingBatches

SMALL_MODEL_PARAMETERS = 2_000_000
IN_MEMORY_BYTES = int(os.environ.get("CONVEYOR_IN_MEMORY_BYTES", str(2 << 30)))

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Rank 0's validation after each epoch: (model, loss, autocast) -> the metrics of the whole split.
Validation = Callable[[nn.Module, LossFn, Callable[[], Any]], dict[str, float]]


def train(
    config: TrainerConfig, data_dir: Path, out_dir: Path, marks: startup.Startup | None = None
) -> dict[str, Any]:
    """Train under the current process group (or alone) and return the final result. `marks`: this
    process's start-up so far (`conveyor.trainer.startup`), reported at the first step."""
    started = time.perf_counter()
    if marks is None:
        marks = startup.Startup()
        marks.mark("imported")
    ctx = distributed.setup()
    marks.mark("rendezvous")
    try:
        return _train(config, data_dir, out_dir, ctx, started, marks)
    finally:
        distributed.cleanup(ctx)


def _train(
    config: TrainerConfig,
    data_dir: Path,
    out_dir: Path,
    ctx: distributed.Context,
    started: float,
    marks: startup.Startup,
) -> dict[str, Any]:
    training, task = config.training, config.task
    torch.manual_seed(training.seed + ctx.rank)
    np.random.seed(training.seed + ctx.rank)
    meta = read_metadata(data_dir)
    batches, validation = load_data(config, meta, data_dir, ctx)
    marks.mark("data")
    model = build_model(config.model, meta).to(ctx.device)
    set_cpu_threads(model, ctx)
    forward = parallelize(model, training.compile, ctx)
    dtype = precision_dtype(training.precision, ctx.device)
    state = build_state(config, meta, model, batches.steps, dtype, ctx, started)
    autocast, loss_fn = autocast_for(dtype, ctx.device), make_loss(meta, training.label_smoothing)
    schedule = config.optimizer.schedule
    step_schedule = schedule.name != "constant" or schedule.warmup_epochs > 0  # else it stays 1
    latest = out_dir / CHECKPOINT_DIR / LATEST_CHECKPOINT
    state.resume(latest)
    marks.mark("model")

    def first_step_done() -> None:
        marks.mark("firstStep")
        startup.report(marks, ctx.rank, ctx.world_size)

    first, verdicts = True, progress.verdict_epochs()
    while not state.finished:
        epoch = state.epoch + 1
        epoch_start = time.perf_counter()
        epoch_batches = batches.epoch(epoch)
        if first:
            epoch_batches, first = startup.after_first(epoch_batches, first_step_done), False
        loss_sum = train_epoch(
            forward, state, epoch_batches, loss_fn, autocast, training.gradient_clipping, step_schedule
        )
        train_loss = float(distributed.mean(ctx, loss_sum / batches.steps))
        samples_per_second = batches.samples_per_epoch * ctx.world_size / (time.perf_counter() - epoch_start)
        stop = None  # rank 0 validates the whole split and decides; every rank follows its decision
        if ctx.is_main:
            metrics = validation(model, loss_fn, autocast)
            metrics.update(trainLoss=train_loss, learningRate=state.optimizer.param_groups[0]["lr"])
            stop = state.record(epoch, metrics, task.metric)
            event = progress.epoch_event(epoch, training.epochs, metrics, samples_per_second, state.elapsed())
            progress.emit(out_dir, event)
        state.epoch = epoch
        state.finished = bool(distributed.broadcast_object(ctx, stop)) or epoch >= training.epochs
        state.save(latest)
        if ctx.is_main and epoch in verdicts and not state.finished:
            progress.await_verdict(out_dir, epoch)  # the other ranks wait in the next epoch's collectives

    result = final_result(state, task.metric)
    if ctx.is_main:
        write_artifacts(out_dir, config, meta, state, result)
    return result


def train_epoch(
    forward: nn.Module,
    state: TrainingState,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn,
    autocast: Callable[[], Any],
    clipping: float | None,
    step_schedule: bool,
) -> torch.Tensor:
    """One pass over this rank's batches; returns the summed loss, left on the device so that the
    steps never wait for it."""
    model, optimizer, scheduler, scaler = state.model, state.optimizer, state.scheduler, state.scaler
    forward.train()
    loss_sum = torch.zeros((), device=state.ctx.device)
    for xb, yb in batches:
        with autocast():
            loss = loss_fn(forward(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clipping is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clipping)
        scaler.step(optimizer)
        scaler.update()
        if step_schedule:
            scheduler.step()
        loss_sum += loss.detach()
    return loss_sum


# --- setup --------------------------------------------------------------------------------------


def load_data(
    config: TrainerConfig, meta: DatasetMetadata, data_dir: Path, ctx: distributed.Context
) -> tuple[InMemoryBatches | LoaderBatches | DatasetBatches | StreamingBatches, Validation]:
    """This rank's training batches, and how rank 0 validates: on the prepared validation split held on
    the device, or, for the user's dataset (`data.entrypoint`), on its validation split read a batch at
    a time (`conveyor.trainer.data.datasets`)."""
    if config.data.entrypoint:
        train_set = datasets.load(config, "train")
        augment = make_augmentation(config, meta)
        outputs = datasets.validation_outputs(config, ctx)

        def validate_dataset(
            model: nn.Module, loss_fn: LossFn, autocast: Callable[[], Any]
        ) -> dict[str, float]:
            return output_metrics(meta, *outputs(model, autocast), loss_fn)

        return DatasetBatches(train_set, config, ctx, augment), validate_dataset
    if meta.storage == "parquet":  # a source larger than memory, streamed a batch at a time
        from conveyor.trainer.data import streaming

        return streaming.load_streamed(config, meta, data_dir, ctx, make_augmentation(config, meta))
    x_train, y_train = load_split(data_dir, "train")
    if x_train.shape[0] < ctx.world_size:
        raise DataError(
            f"the train split has {x_train.shape[0]} rows, fewer than the {ctx.world_size} processes"
        )
    batches = make_batches(config, meta, x_train, y_train, ctx)
    if not ctx.is_main:  # only rank 0 validates: the other ranks never read the validation split
        return batches, not_validating
    x_val, y_val = load_split(data_dir, "validation")
    x, y = torch.from_numpy(x_val).to(ctx.device), torch.from_numpy(y_val).to(ctx.device)

    def validate_split(model: nn.Module, loss_fn: LossFn, autocast: Callable[[], Any]) -> dict[str, float]:
        return validate(model, meta, x, y, loss_fn, autocast, config.training.batch_size)

    return batches, validate_split


def not_validating(model: nn.Module, loss_fn: LossFn, autocast: Callable[[], Any]) -> dict[str, float]:
    raise RuntimeError("only rank 0 validates")


def parallelize(model: nn.Module, compiled: bool, ctx: distributed.Context) -> nn.Module:
    """What the training step calls: `model`, compiled if asked, under DDP with several processes."""
    if compiled:
        model = torch.compile(model)  # type: ignore[assignment]
    if not ctx.distributed:
        return model
    return DistributedDataParallel(
        model,
        device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
        gradient_as_bucket_view=True,  # gradients live in the all-reduce buckets: one copy less per step
    )


def build_state(
    config: TrainerConfig,
    meta: DatasetMetadata,
    model: nn.Module,
    steps_per_epoch: int,
    dtype: torch.dtype,
    ctx: distributed.Context,
    started: float,
) -> TrainingState:
    """A fresh run's state: `model` with its optimizer, LR schedule, grad scaler and early stopping."""
    training = config.training
    optimizer = build_optimizer(config.optimizer, model)
    factor = schedule_factor(config.optimizer.schedule, steps_per_epoch, training.epochs * steps_per_epoch)
    early = training.early_stopping
    return TrainingState(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
        scaler=torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16),
        stopping=EarlyStopping(
            maximize=config.task.maximize,
            patience=early.patience if early else None,
            min_delta=early.min_delta if early else 0.0,
        ),
        fingerprint=run_fingerprint(config, meta, ctx.world_size),
        ctx=ctx,
        started=started,
    )


# --- the artifact -------------------------------------------------------------------------------


def final_result(state: TrainingState, metric: str) -> dict[str, Any]:
    """The succeeded result (`conveyor.trainer.progress`): the best epoch's metrics and objective."""
    stopping = state.stopping
    return {
        "status": "succeeded",
        "epochsRun": stopping.epochs_seen(state.epoch),
        "bestEpoch": stopping.best_epoch,
        "objective": {"metric": metric, "value": stopping.best},
        "metrics": state.best_metrics,
        "stoppedEarly": stopping.should_stop,
        "durationSeconds": round(state.elapsed(), 3),
    }


def write_artifacts(
    out_dir: Path, config: TrainerConfig, meta: DatasetMetadata, state: TrainingState, result: dict[str, Any]
) -> None:
    """The best epoch's weights (the last epoch's if no epoch had a metric), the same network as an
    exported program when it exports (`conveyor.trainer.export`), the card and the result."""
    weights = state.best_weights if state.best_weights is not None else state.model.state_dict()
    torch.save(weights, out_dir / WEIGHTS_FILE)
    state.model.load_state_dict(weights)
    export_model(state.model, torch.zeros(2, *meta.feature_shape, device=state.ctx.device), out_dir)
    write_card(out_dir, ModelCard(name=out_dir.name, config=config, dataset=meta, metrics=state.best_metrics))
    progress.write_result(out_dir, result)


# --- batches ------------------------------------------------------------------------------------


class InMemoryBatches:
    """The train split on the device; each epoch a disjoint, seeded shard per rank, sliced into batches."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        ctx: distributed.Context,
        seed: int,
        augment: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> None:
        self.x, self.y, self.batch_size, self.ctx, self.seed, self.augment = (
            x,
            y,
            batch_size,
            ctx,
            seed,
            augment,
        )
        self.samples_per_epoch = x.shape[0] // ctx.world_size
        self.steps = batch_count(self.samples_per_epoch, batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.x.shape[0], generator=generator)
        shard = order[self.ctx.rank :: self.ctx.world_size][: self.samples_per_epoch].to(self.x.device)
        xs, ys = self.x[shard], self.y[shard]  # one gather per epoch; batches are views
        if self.augment is not None:
            xs = self.augment(xs)
        for step in range(self.steps):
            begin = step * self.batch_size
            yield xs[begin : begin + self.batch_size], ys[begin : begin + self.batch_size]


class LoaderBatches:
    """A DataLoader (workers, pinned memory, DistributedSampler) for data too big to sit on the device."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        ctx: distributed.Context,
        seed: int,
        augment: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> None:
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True
        )
        workers = min(4, max(1, (os.cpu_count() or 2) // max(1, ctx.world_size) - 1))
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=ctx.device.type == "cuda",
            persistent_workers=True,
            drop_last=False,
        )
        self.ctx, self.augment = ctx, augment
        self.samples_per_epoch = len(self.sampler)
        self.steps = len(self.loader)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        for xb, yb in self.loader:
            xb = xb.to(self.ctx.device, non_blocking=True)
            yield (self.augment(xb) if self.augment else xb), yb.to(self.ctx.device, non_blocking=True)


def batch_count(samples: int, batch_size: int) -> int:
    """Batches per epoch; a trailing batch of one row is dropped (batch norm cannot train on it)."""
    steps = math.ceil(samples / batch_size)
    return steps - 1 if steps > 1 and samples % batch_size == 1 else steps


def make_batches(
    config: TrainerConfig, meta: DatasetMetadata, x: np.ndarray, y: np.ndarray, ctx: distributed.Context
) -> InMemoryBatches | LoaderBatches:
    augment = make_augmentation(config, meta)
    seed = config.data.split.seed + config.training.seed
    path = os.environ.get("CONVEYOR_DATA_PATH")
    folder_images = meta.input_kind == "image" and not meta.source.startswith("builtin://")
    if path == "loader" or (path != "memory" and (folder_images or x.nbytes > IN_MEMORY_BYTES)):
        return LoaderBatches(x, y, config.training.batch_size, ctx, seed, augment)
    tensors = torch.from_numpy(x).to(ctx.device), torch.from_numpy(y).to(ctx.device)
    return InMemoryBatches(*tensors, config.training.batch_size, ctx, seed, augment)


# --- augmentation -------------------------------------------------------------------------------


def make_augmentation(
    config: TrainerConfig, meta: DatasetMetadata
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    shift = config.data.augmentation.random_shift if meta.input_kind == "image" else 0
    noise = config.data.augmentation.gaussian_noise
    if not shift and not noise:
        return None

    def augment(x: torch.Tensor) -> torch.Tensor:
        if shift:
            x = random_shift(x, shift)
        if noise:
            x = x + noise * torch.randn_like(x)
        return x

    return augment


def random_shift(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Translate each image by up to `shift` pixels in each direction (edges replicated): one gather."""
    n, _, height, width = x.shape
    offsets = torch.randint(-shift, shift + 1, (n, 2), device=x.device)
    rows = (torch.arange(height, device=x.device) + offsets[:, :1]).clamp_(0, height - 1)  # [n, h]
    cols = (torch.arange(width, device=x.device) + offsets[:, 1:]).clamp_(0, width - 1)  # [n, w]
    index = torch.arange(n, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


# --- optimisation -------------------------------------------------------------------------------


def build_optimizer(spec: OptimizerSpec, model: nn.Module) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), spec.learning_rate, spec.weight_decay
    # fused: one kernel updates every parameter, instead of a Python loop over tensors.
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=wd, fused=True)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=True)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=True)
    if spec.name == "adagrad":  # torch fuses Adagrad on CPU only
        on_cpu = next(model.parameters()).device.type == "cpu"
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd, fused=on_cpu or None)
    return torch.optim.RMSprop(params, lr=lr, momentum=spec.momentum, weight_decay=wd)


def schedule_factor(spec: ScheduleSpec, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each optimizer step: linear warm-up, then the schedule."""
    warmup = min(spec.warmup_epochs * steps_per_epoch, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if spec.name == "step":
            return float(spec.gamma ** ((step - warmup) // (spec.step_size * steps_per_epoch)))
        if spec.name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if spec.name == "onecycle":  # rise from 1/25 over 30% (unless warm-up did it), then anneal to ~0
            rise = 0.0 if warmup else 0.3
            if progress < rise:
                return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * progress / rise))
            fall = (progress - rise) / (1 - rise)
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * min(fall, 1.0)))
        return 1.0

    return factor


def precision_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def autocast_for(dtype: torch.dtype, device: torch.device) -> Callable[[], Any]:
    """A new autocast context per call (forward passes, validation); a no-op context in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def make_loss(meta: DatasetMetadata, label_smoothing: float) -> LossFn:
    if meta.task == "classification":
        return lambda out, y: F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
    stats = meta.target_normalization
    scale = stats.scale[0] if stats.method != "none" and stats.scale else 1.0
    # Models predict in target units; the loss is the MSE of the standardised target.
    return lambda out, y: F.mse_loss(out.float().squeeze(-1) / scale, y / scale)


# --- helpers ------------------------------------------------------------------------------------


def set_cpu_threads(model: nn.Module, ctx: distributed.Context) -> None:
    """Small models on CPU run fastest single-threaded: intra-op threads only add synchronisation, and on
    a shared machine spinning OpenMP threads slow training down by orders of magnitude. An explicit
    OMP_NUM_THREADS (torchrun sets 1 for several processes per node) always wins."""
    small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS
    if ctx.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and small:
        torch.set_num_threads(1)


# --- the stage ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="TrainerConfig as inline JSON or a JSON/YAML file")
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset directory")
    parser.add_argument("--out", required=True, type=Path, help="model directory to write")


def run(args: argparse.Namespace) -> int:
    from conveyor.trainer.config import ConfigError, load_config

    marks = startup.Startup()
    marks.mark("imported")
    try:
        config = load_config(args.config)
        if not (args.data / "metadata.json").is_file():
            raise DataError(f"{args.data} holds no prepared dataset; run `prepare --out {args.data}` first")
        if config.training.command is not None:
            raise ConfigError("training.command is run by the `command` stage, not `train`")
        if config.training.entrypoint is not None:  # L2: the user's loop instead of this one
            from conveyor.trainer.user_loop import run_entrypoint

            return run_entrypoint(config, args.data, args.out)
        train(config, args.data, args.out, marks)
    except ConfigError as error:
        report_failure(args.out, "InvalidConfig", str(error))
        raise
    except DataError as error:
        report_failure(args.out, "DataError", str(error))
        raise
    except Exception as error:
        if final_attempt():  # torchrun restarts the workers otherwise; the next attempt reports
            report_failure(args.out, "TrainingError", f"{type(error).__name__}: {error}")
        raise
    return 0


def final_attempt() -> bool:
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    return restarts >= int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))


def report_failure(out_dir: Path, reason: str, message: str) -> None:
    """A failed result the control plane can read (rank 0 only; other ranks' errors reach it via torchrun)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    with contextlib.suppress(OSError):
        progress.write_result(out_dir, {"status": "failed", "reason": reason, "message": message[:2000]})

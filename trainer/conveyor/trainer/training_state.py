"""The training state: everything a checkpoint holds, in one object that saves and restores itself.

A run is resumable only if a checkpoint holds all of its state, so that state is owned here, in one
place: the model, optimizer, learning-rate schedule, AMP grad scaler, early stopping, every rank's RNG
states, the last finished epoch, the best epoch's weights and metrics, whether the run is done, and the
seconds spent so far. `state_dict()` and `load_state_dict()` are the checkpoint's contents, written and
read by the same code; `conveyor.trainer.checkpoint` does the atomic file I/O.

Checkpoint keys: fingerprint, epoch, model, optimizer, scheduler, scaler, rng (one entry per rank),
early_stopping, best_state (the best epoch's weights, on the CPU), best_metrics, finished, elapsed.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conveyor.trainer import checkpoint, distributed, progress
from conveyor.trainer.artifacts import DatasetMetadata
from conveyor.trainer.config import TrainerConfig

# Metrics of an epoch that describe the training rather than the model; a best epoch's metrics omit them.
TRAINING_METRICS = ("trainLoss", "learningRate")


@dataclass
class EarlyStopping:
    """Best value so far and epochs since it improved by more than `min_delta`."""

    maximize: bool
    patience: int | None
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    last_epoch: int = 0

    def update(self, value: float, epoch: int) -> bool:
        self.last_epoch = epoch
        better = not math.isnan(value) and (
            self.best is None
            or (value > self.best + self.min_delta if self.maximize else value < self.best - self.min_delta)
        )
        if better:
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def epochs_seen(self, epoch: int) -> int:
        return max(self.last_epoch, 0) or epoch


@dataclass(eq=False)
class TrainingState:
    """A run's state between epochs. `model` is the plain module (not the compiled or DDP wrapper).

    Rank 0 alone validates, so only rank 0 calls `record`; `finished` is set on every rank from rank
    0's decision, and every rank calls `save` and `resume` (both are collective)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    stopping: EarlyStopping
    fingerprint: dict[str, Any]  # what a checkpoint must match to be resumed (`run_fingerprint`)
    ctx: distributed.Context
    started: float = field(default_factory=time.perf_counter)  # this attempt's start, perf_counter
    epoch: int = 0  # the last epoch that finished
    earlier_seconds: float = 0.0  # spent by earlier attempts, up to their last checkpoint
    best_weights: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    finished: bool = False

    def elapsed(self) -> float:
        """Seconds of training so far, earlier attempts included."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def record(self, epoch: int, metrics: dict[str, float], metric: str) -> bool:
        """Feed an epoch's validation metrics to early stopping, keep the weights and metrics of a new
        best, and return whether to stop."""
        if self.stopping.update(metrics.get(metric, math.nan), epoch):
            weights = self.model.state_dict().items()
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in weights}
            self.best_metrics = {k: v for k, v in metrics.items() if k not in TRAINING_METRICS}
        return self.stopping.should_stop

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's contents. Collective: it gathers every rank's RNG states, so every rank
        calls it."""
        rngs = distributed.gather_objects(self.ctx, checkpoint.rng_state())
        return {
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "early_stopping": asdict(self.stopping),
            "best_state": self.best_weights,
            "best_metrics": self.best_metrics,
            "finished": self.finished,
            "elapsed": self.elapsed(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's contents; this rank takes its own RNG states from it."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) == self.ctx.world_size:
            checkpoint.set_rng_state(state["rng"][self.ctx.rank])
        self.stopping = EarlyStopping(**state["early_stopping"])
        self.epoch, self.earlier_seconds, self.finished = state["epoch"], state["elapsed"], state["finished"]
        self.best_weights, self.best_metrics = state["best_state"], state["best_metrics"]

    def save(self, path: Path) -> None:
        """Every rank calls this; rank 0 writes the checkpoint atomically."""
        state = self.state_dict()
        if self.ctx.is_main:
            checkpoint.save(path, state)

    def resume(self, path: Path) -> bool:
        """Load the checkpoint at `path` if there is a whole one of this run (same fingerprint); return
        whether it was loaded. Every rank calls this: rank 0 deletes partial files a crashed writer left,
        reads the checkpoint and broadcasts it."""
        state = None
        if self.ctx.is_main:
            checkpoint.remove_partials(path.parent)
            state = checkpoint.load(path)
            if state is not None and state.get("fingerprint") != self.fingerprint:
                progress.main_print(f"checkpoint {path} belongs to a different configuration; starting fresh")
                state = None
        state = distributed.broadcast_object(self.ctx, state)
        if state is None:
            return False
        self.load_state_dict(state)
        if self.ctx.is_main:
            progress.main_print(f"resumed from {path} after epoch {self.epoch}")
        return True


def run_fingerprint(config: TrainerConfig, meta: DatasetMetadata, world_size: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the same model, data shape and optimisation setup."""
    return {
        "model": config.model.to_wire(),
        "optimizer": config.optimizer.to_wire(),
        "batchSize": config.training.batch_size,
        "epochs": config.training.epochs,
        "featureShape": list(meta.feature_shape),
        "outputs": meta.output_size,
        "worldSize": world_size,
    }

"""The peer: PyTorch Lightning's Trainer with its standard DataLoader, same model and data.

Run under torchrun (Lightning picks up the torchelastic environment) from `.venv-bench` by
`benchmarks/training_overhead.py`. `DataLoader(TensorDataset, batch_size, shuffle=True)` with Lightning's
automatic DistributedSampler, DDP on gloo, AdamW; validation, checkpointing, logging, progress bar and
model summary off, so only the training loop is timed. Rank 0 prints per-epoch samples/s as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from conveyor.trainer.artifacts import read_metadata
from conveyor.trainer.config import ModelSpec
from conveyor.trainer.models import build_model


class Module(pl.LightningModule):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=2e-3)


class Throughput(pl.Callback):
    def __init__(self, samples: int) -> None:
        self.samples, self.rates, self.start = samples, [], 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        torch.distributed.barrier()
        self.rates.append(self.samples / (time.perf_counter() - self.start))


def main() -> None:
    data_dir, spec_json, epochs, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    meta = read_metadata(data_dir)
    with np.load(data_dir / "train.npz") as arrays:
        dataset = TensorDataset(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True)
    throughput = Throughput(len(dataset))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=epochs,
        callbacks=[throughput],
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(Module(build_model(ModelSpec.model_validate_json(spec_json), meta)), loader)
    if trainer.global_rank == 0:
        print(json.dumps({"samplesPerSecond": throughput.rates}), flush=True)


if __name__ == "__main__":
    main()

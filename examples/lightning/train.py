"""A PyTorch Lightning script: Conveyor's one addition is `ConveyorCallback`, which reports each
validation (the objective, `val_accuracy`, reaches the tuner as `accuracy`) and stops the Trainer when
the pipeline prunes the trial; `conveyor.sdk.save_model` writes the artifact that evaluation and
serving use. Lightning picks up torchrun's environment itself (DDP over the processes Conveyor starts).

    torchrun --nproc-per-node 2 train.py        # by hand: CONVEYOR_DATA=<prepared digits>
"""

from __future__ import annotations

import os

import lightning
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from conveyor import sdk
from conveyor.sdk.lightning import ConveyorCallback


class DigitsModule(lightning.LightningModule):
    def __init__(self, classes: int, learning_rate: float) -> None:
        super().__init__()
        self.learning_rate = learning_rate
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


def main() -> None:
    config = sdk.config()  # {} by hand: the defaults below
    learning_rate = config.get("optimizer", {}).get("learningRate", 0.003)
    max_steps = config.get("training", {}).get("maxSteps") or 300
    lightning.seed_everything(0, verbose=False)

    train_set, validation = sdk.dataset("train"), sdk.dataset("validation")
    classes = int(train_set.tensors[1].max()) + 1
    module = DigitsModule(classes, learning_rate)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=local_processes,
        num_nodes=int(os.environ.get("WORLD_SIZE", "1")) // local_processes,
        strategy="ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "auto",
        max_steps=max_steps,
        max_epochs=-1,
        val_check_interval=max(1, max_steps // 10),
        check_val_every_n_epoch=None,
        callbacks=[ConveyorCallback()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        module,
        DataLoader(train_set, batch_size=32, shuffle=True),
        DataLoader(validation, batch_size=256),
    )
    sdk.save_model(module.net, validation.tensors[0][:4])  # rank 0 writes; the others return None


if __name__ == "__main__":
    main()

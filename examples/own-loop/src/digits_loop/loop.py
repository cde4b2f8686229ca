"""A plain PyTorch DDP loop that Conveyor runs as `spec.training.entrypoint`.

Everything Conveyor-specific is a `conveyor.sdk` call: the prepared splits (`dataset`), the run's
identity (`info`), reports (`report`, `should_stop`), the checkpoint directory (`checkpoint_dir`, kept
across retries of the workload: the loop resumes from it) and the artifact (`save_model`). Outside a
pipeline, with CONVEYOR_DATA set to a prepared directory, `train(config)` runs the same by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from conveyor import sdk
from digits_loop.model import build

EVALUATIONS = 20  # validation points over the run


def model_info(train_set: Any) -> sdk.ModelInfo:
    features, _ = train_set[0]
    metadata = json.loads((Path(os.environ[sdk.env.DATA]) / "metadata.json").read_text())
    classes = tuple(metadata["classes"])
    return sdk.ModelInfo("classification", tuple(features.shape), len(classes), classes)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train()
    return {
        "accuracy": float((logits.argmax(1) == y).float().mean()),
        "loss": float(F.cross_entropy(logits, y)),
    }


def train(config: dict[str, Any]) -> None:
    run = sdk.info()
    training = config["training"]
    torch.manual_seed(training["seed"])
    train_set, validation = sdk.dataset("train"), sdk.dataset("validation")
    val_x, val_y = validation.tensors
    model = build(config["model"]["options"], model_info(train_set))
    forward: nn.Module = DistributedDataParallel(model) if run.world_size > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["optimizer"]["learningRate"])

    step = 0
    checkpoint = sdk.checkpoint_dir() / "loop.pt"
    if checkpoint.exists():  # a retry of this workload: continue where the last attempt saved
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]

    max_steps = training["maxSteps"]
    every = max(1, max_steps // EVALUATIONS)
    sampler = DistributedSampler(
        train_set, num_replicas=run.world_size, rank=run.rank, seed=training["seed"], drop_last=True
    )
    loader = DataLoader(train_set, batch_size=training["batchSize"], sampler=sampler, drop_last=True)
    epoch = step // len(loader)
    while step < max_steps:
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            sdk.report(step, {"trainLoss": loss.detach()})  # cheap: kept until the next written report
            if step % every == 0 or step == max_steps:
                sdk.report(step, evaluate(model, val_x, val_y))
                if run.is_main:
                    tmp = checkpoint.with_suffix(".tmp")
                    torch.save(
                        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp
                    )
                    tmp.replace(checkpoint)
                if sdk.should_stop():  # pruned: every rank leaves at the same step
                    max_steps = step
            if step >= max_steps:
                break
        epoch += 1
    sdk.save_model(model, val_x[:8])

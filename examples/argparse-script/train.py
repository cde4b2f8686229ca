"""An ordinary torchrun training script: hyperparameters from argparse, DDP when launched with several
processes. Conveyor tunes it through its command line (`{{params.x}}` in spec.training.command), and
the few `conveyor.sdk` calls feed the tuner and save the artifact; run by hand they do nothing
(`CONVEYOR_DATA` must then name a prepared dataset, see conveyor.sdk.dataset).

    torchrun --nproc-per-node 2 train.py --lr 0.01 --epochs 30
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from conveyor import sdk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)

    train_set, validation = sdk.dataset("train"), sdk.dataset("validation")
    features = train_set.tensors[0].shape[1]
    classes = int(train_set.tensors[1].max()) + 1
    model = nn.Sequential(nn.Linear(features, args.hidden), nn.ReLU(), nn.Linear(args.hidden, classes))
    forward = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, drop_last=True)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)

    val_x, val_y = validation.tensors
    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = model(val_x)
        accuracy = float((logits.argmax(1) == val_y).float().mean())
        print(f"epoch {epoch}: validation accuracy {accuracy:.4f}", flush=True)
        sdk.report(epoch, {"accuracy": accuracy, "loss": float(F.cross_entropy(logits, val_y))})
        if sdk.should_stop():
            break
    sdk.save_model(model, val_x[:4])
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

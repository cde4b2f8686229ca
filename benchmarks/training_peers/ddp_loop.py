"""The reference: a minimal hand-written DDP loop over the same in-memory data path as Conveyor.

Run under torchrun by `benchmarks/training_overhead.py`. Each epoch: one seeded permutation, a disjoint
shard per rank, batches sliced from the shard, forward, cross-entropy, backward, AdamW step. Nothing
else: no validation, no metrics, no checkpoints. Rank 0 prints one JSON line with per-epoch samples/s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from conveyor.trainer.artifacts import read_metadata
from conveyor.trainer.config import ModelSpec
from conveyor.trainer.models import build_model


def main() -> None:
    data_dir, spec_json, epochs, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)
    meta = read_metadata(data_dir)
    with np.load(data_dir / "train.npz") as arrays:
        x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    model = DistributedDataParallel(build_model(ModelSpec.model_validate_json(spec_json), meta))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    per_rank = x.shape[0] // world
    rates = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(epoch))
        shard = order[rank::world][:per_rank]
        xs, ys = x[shard], y[shard]
        for begin in range(0, per_rank, batch):
            loss = F.cross_entropy(model(xs[begin : begin + batch]), ys[begin : begin + batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        dist.barrier()
        rates.append(per_rank * world / (time.perf_counter() - start))
    if rank == 0:
        print(json.dumps({"samplesPerSecond": rates}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

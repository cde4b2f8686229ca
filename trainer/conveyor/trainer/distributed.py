"""The process group, from torchrun's environment: the few collectives the training loop needs.

torchrun (or a plain `python`, as world size 1) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT. The backend follows the device: NCCL when this process has a CUDA device, gloo otherwise.
Collectives here are no-ops in a single process, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> Context:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("CONVEYOR_COLLECTIVE_TIMEOUT", "600")))
        dist.init_process_group(
            backend,
            store=attempt_store(rank, world_size, timeout),
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            device_id=device if backend == "nccl" else None,
        )
    return Context(rank, world_size, local_rank, device, backend)


def attempt_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store, namespaced by torchrun's restart count.

    torchrun's agent keeps one store across restarts, so the peers' addresses of a failed attempt are
    still in it: a restarted rank that reads its peer's key before the new peer wrote it connects to the
    dead process and fails (seen with gloo under `--max-restarts`). A prefix per attempt keeps each
    attempt's keys apart. Without torchrun's agent, rank 0 hosts the store, as `env://` would.
    With several nodes each agent counts its own restarts; the counts agree because a lost worker
    makes every other rank's next collective fail, so every agent restarts its workers as failed.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, world_size, is_master=not agent and rank == 0, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(
        f"conveyor/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/attempt-{attempt}", store
    )


def cleanup(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(ctx: Context, value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def gather_objects(ctx: Context, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not ctx.distributed:
        return [value]
    values: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(values, value)
    return values


def mean(ctx: Context, value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks."""
    if ctx.distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= ctx.world_size
    return value

"""Where a training process's start-up went: one `startup` event per process, at its first step.

A trial that trains for one second can spend ten getting there, and on Kubernetes the time is split
between the cluster (creating, scheduling and starting the pod) and the trainer (its launcher,
interpreter and imports, the rendezvous, reading the data, building the model). The cluster's part
shows in the pod's status; this event shows the trainer's, per process, on one clock (Unix time, so
the two can be laid side by side on one machine)::

    {"event": "startup", "rank": 0, "worldSize": 2, "at": {"launcher": .., "process": ..,
     "imported": .., "rendezvous": .., "data": .., "model": .., "firstStep": ..}}

`launcher` is when torchrun's agent (then the pod's own process) started, present only under one;
`process` is when this process started (both from /proc, to 10 ms; absent where there is none);
`imported` when the train stage began (interpreter, torch and the trainer imported); then the
rendezvous, the data, the model (built, wrapped in DDP, its optimizer made) and the first training
step done (on a GPU: its kernels queued; nothing here waits for the device). Every rank prints its own
on stdout (its pod's log), so no rank waits on another for it; the epoch events in progress.jsonl are
unchanged.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PHASES = ("launcher", "process", "imported", "rendezvous", "data", "model", "firstStep")


def process_started_at(pid: int | str = "self") -> float | None:
    """When process `pid` started, as Unix time (to the kernel's clock tick), or None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError):
        return None
    now = time.time()
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    start_ticks = int(fields[19])  # field 22 of proc(5), the 3rd after ")" being field 3
    return now - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


class Startup:
    """The marks of one process, taken as it gets to each phase (`mark`), and the event they make."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        if os.environ.get("TORCHELASTIC_RUN_ID") is not None:  # a worker of torchrun's agent
            launcher = process_started_at(os.getppid())
            if launcher is not None:
                self.at["launcher"] = launcher
        started = process_started_at()
        if started is not None:
            self.at["process"] = started

    def mark(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown start-up phase {phase!r}")
        self.at[phase] = time.time()

    def event(self, rank: int, world_size: int) -> dict[str, Any]:
        at = {"launcher": round(self.at["launcher"], 4)} if "launcher" in self.at else {}
        # Phases in order: one passed before this process existed (imports a fork server did before
        # forking it) counts as done when the process started.
        done = 0.0
        for phase in PHASES[1:]:
            if phase in self.at:
                done = max(done, self.at[phase])
                at[phase] = round(done, 4)
        return {"event": "startup", "rank": rank, "worldSize": world_size, "at": at}


def after_first(items: Iterable[T], done: Callable[[], None]) -> Iterator[T]:
    """`items`, calling `done` once, when the consumer is through with the first item (it asks for the
    next one, or for the end)."""
    iterator = iter(items)
    for item in iterator:
        yield item
        done()
        break
    yield from iterator


def report(startup: Startup, rank: int, world_size: int) -> None:
    """Print the event (stdout: the pod's log, the workload's log locally); progress.jsonl stays the
    epoch events its readers expect."""
    print(json.dumps(startup.event(rank, world_size), separators=(",", ":")), flush=True)

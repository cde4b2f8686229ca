"""What executors observe and feed back to the engine, in executor-independent terms.

Per workload name (the current attempt): its state, the epoch events seen so far (from progress.jsonl
locally, from the artifact store on Kubernetes), the final result (result.json or the container's
termination message, which survives operator downtime), a reason/message for failures (e.g.
OOMKilled, ImagePullBackOff, RendezvousTimeout) and start/finish times.

States: pending (created, not running yet), running, succeeded, failed, and lost: the executor knows
the workload should exist (status says so, see `conveyor.operator.engine.active_workloads`) but it
is gone without a result, e.g. local processes after a Ctrl-C or a Job deleted by hand. The engine
starts a lost workload again as its next attempt (from its checkpoint), without counting a failure.
A workload missing from the observations is simply not known yet: the engine waits.

An observation for another attempt than the one recorded in status is stale and ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

ObservedState = Literal["pending", "running", "succeeded", "failed", "lost"]


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    metrics: Mapping[str, float]
    epochs: int | None = None


@dataclass(frozen=True)
class WorkloadObservation:
    state: ObservedState
    attempt: int = 0
    epochs: tuple[EpochReport, ...] = ()
    result: Mapping[str, Any] | None = None  # the trainer's final result (conveyor.trainer.progress)
    reason: str | None = None
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def from_events(
        cls,
        state: ObservedState,
        events: Iterable[Mapping[str, Any]],
        attempt: int = 0,
        **kwargs: Any,
    ) -> WorkloadObservation:
        """Build from progress events as the trainer writes them: epoch events and an optional result."""
        epochs: list[EpochReport] = []
        result = kwargs.pop("result", None)
        for event in events:
            if event.get("event") == "epoch":
                epochs.append(
                    EpochReport(int(event["epoch"]), dict(event.get("metrics", {})), event.get("epochs"))
                )
            elif event.get("event") == "result":
                result = dict(event)
        return cls(state=state, attempt=attempt, epochs=tuple(epochs), result=result, **kwargs)


@dataclass(frozen=True)
class ServingObservation:
    ready: bool
    model: str | None = None  # the artifact being served
    url: str | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Observations:
    workloads: Mapping[str, WorkloadObservation] = field(default_factory=dict)
    serving: ServingObservation | None = None

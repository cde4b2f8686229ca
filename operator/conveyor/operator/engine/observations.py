"""What executors observe and feed back to the engine: facts, in executor-independent terms. Every
judgement of them is the engine's (`absorb`), so local and Kubernetes runs decide alike.

The driver asks an executor about the workloads status says should exist, by (name, attempt)
(`conveyor.operator.engine.active_workloads`), and the executor reports per name:

- `state` as seen: pending (created, not running yet), running, succeeded (every process exited 0;
  the Job is Complete), failed (a process exited non-zero; the Job Failed), or lost (the executor
  cannot find it: local processes after a Ctrl-C, a Job deleted by hand).
- `result`: the trainer's final result whenever this attempt left one (result.json locally, the
  container's termination message on Kubernetes, which survives operator downtime), also while other
  ranks still run.
- `epochs`: the epoch events seen so far (progress.jsonl locally, the progress endpoint on Kubernetes).
- `reason`/`message` for a failure or a start that is stuck, from what it sees: exit code 2 is
  InvalidInput (`INVALID_INPUT`), OOMKilled, ImagePullBackOff, ...; and start/finish times.

What that means is decided in `absorb`: a result is the verdict; a workload that succeeded without a
result failed (NoResult); a lost one without a result starts again as its next attempt, without
counting a failure. A workload missing from the observations is not known yet: the engine waits. An
observation of another attempt than the one recorded in status is stale and ignored.

Serving: whether the executor serves `model` and it is ready; not ready and no model means nothing is
served, and the engine starts serving again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

ObservedState = Literal["pending", "running", "succeeded", "failed", "lost"]
# The reason executors report for the trainer's exit status EXIT_INVALID_INPUT (invalid config or
# data); a permanent failure (`conveyor.operator.workloads.PERMANENT_REASONS`): never retried.
INVALID_INPUT = "InvalidInput"


@dataclass(frozen=True)
class EpochReport:
    """One progress event: Conveyor's loop sends one per epoch; a user loop's `conveyor.sdk.report`
    sends the same shape, numbered by report in `epoch`, with the `step` it was made at."""

    epoch: int
    metrics: Mapping[str, float]
    epochs: int | None = None
    step: int | None = None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> EpochReport:
        """From a progress event's JSON (`progress.jsonl`, or a POST to the progress endpoint)."""
        metrics = {k: float(v) for k, v in (event.get("metrics") or {}).items() if isinstance(v, int | float)}
        epochs, step = event.get("epochs"), event.get("step")
        return cls(
            int(event["epoch"]),
            metrics,
            epochs if isinstance(epochs, int) else None,
            step if isinstance(step, int) and not isinstance(step, bool) else None,
        )


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
        """Build from the epoch events in `progress.jsonl` (the result travels apart, in `result`)."""
        epochs = tuple(EpochReport.from_event(event) for event in events if event.get("event") == "epoch")
        return cls(state=state, attempt=attempt, epochs=epochs, **kwargs)


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

"""What the engine asks an executor to do. Executors carry actions out and never decide anything;
`conveyor.operator.executors.protocol.carry_out` maps each action onto the `Executor` interface.

- `StartWorkload(workload)`: run it. Idempotent per `workload.key` (name + attempt): a start for a
  key that already exists is a no-op (the engine may repeat one if its status write was lost).
- `StopWorkload(name, attempt, reason, message)`: stop that attempt (pruned trial, suspension,
  deadline, pipeline failure). Stopping something already gone is a no-op.
- `RequestStop(name, attempt, reason, message)`: ask that attempt's user loop to stop by itself
  (`conveyor.sdk.report` returns False): a pruned trial's first chance to end cleanly, before a
  StopWorkload after `tuning.stopGracePeriodSeconds`. Repeated on every reconcile until the attempt is
  gone, so an executor that forgot it (a new leader) learns it again; asking twice is a no-op.
- `StartServing(model, serving)`: serve the artifact directory `model` (relative to the run root:
  "ensemble" or "model") with the serving spec; idempotent per `model`.
- `StopServing(reason)`: tear serving down.
- `Emit(type, reason, message)`: a Kubernetes Event (Normal/Warning) or a log line locally.
- `DeletePipeline(reason)`: ttlSecondsAfterFinished ran out; Kubernetes deletes the resource (its
  children go with it through owner references); the local executor may ignore it.

`Decision.status` is the complete new status to write (only if it differs from the old one);
`requeue_after` says when to reconcile again even if nothing is observed (deadlines, TTL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.workloads import Workload
from conveyor.trainer.config import ServingSpec


@dataclass(frozen=True)
class StartWorkload:
    workload: Workload


@dataclass(frozen=True)
class StopWorkload:
    name: str
    attempt: int
    reason: str
    message: str = ""


@dataclass(frozen=True)
class RequestStop:
    name: str
    attempt: int
    reason: str
    message: str = ""


@dataclass(frozen=True)
class StartServing:
    model: str  # artifact directory relative to the run root: "ensemble" or "model"
    serving: ServingSpec
    name: str = "serve"


@dataclass(frozen=True)
class StopServing:
    reason: str
    name: str = "serve"


@dataclass(frozen=True)
class Emit:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class DeletePipeline:
    reason: str


Action = StartWorkload | StopWorkload | RequestStop | StartServing | StopServing | Emit | DeletePipeline


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    status: PipelineStatus
    requeue_after: float | None = None

    def of(self, kind: type) -> list[Action]:
        return [a for a in self.actions if isinstance(a, kind)]

"""The one interface both executors implement, and the one function that carries a decision out on
either of them.

A driver's step is the same locally (`conveyor.operator.localrun`) and on Kubernetes
(`conveyor.operator.kubernetes.operator`):

    observations = executor.observe(active_workloads(status), serving=status.serving is not None)
    decision = reconcile(spec, status, observations, now)
    <write decision.status if it changed>
    carry_out(executor, decision.actions)

Executors know workloads by (name, attempt) and nothing else of the engine: they never call back into
it, and they report facts, never verdicts (see `conveyor.operator.engine.observations`). Starting is
idempotent per (name, attempt); stopping or deleting what is already gone is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol, assert_never

from conveyor.operator.engine.actions import (
    Action,
    DeletePipeline,
    Emit,
    RequestStop,
    StartServing,
    StartWorkload,
    StopServing,
    StopWorkload,
)
from conveyor.operator.engine.observations import Observations
from conveyor.operator.workloads import Workload
from conveyor.trainer.config import ServingSpec


class Executor(Protocol):
    """Runs workloads and serving for one pipeline, and says what became of them."""

    def start(self, workload: Workload) -> None:
        """Run `workload`; a no-op if its (name, attempt) was started already."""

    def stop(self, name: str, attempt: int) -> None:
        """Stop that attempt with everything it runs."""

    def request_stop(self, name: str, attempt: int) -> None:
        """Ask that attempt's user loop to stop by itself (`conveyor.sdk.report` then returns False);
        idempotent, and a no-op for an attempt that is gone."""

    def observe(self, workloads: Iterable[tuple[str, int]], serving: bool) -> Observations:
        """The facts about `workloads` (by name and attempt), and about serving if `serving`."""

    def start_serving(self, model: str, serving: ServingSpec) -> None:
        """Serve the artifact directory `model` (relative to the run root); a no-op if it already is."""

    def stop_serving(self) -> None:
        """Stop serving."""

    def emit(self, type: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        """Tell people (a Kubernetes Event, a line locally); best effort."""

    def delete_pipeline(self) -> None:
        """The pipeline's time is up (ttlSecondsAfterFinished): remove it, if the executor can."""


def carry_out(executor: Executor, actions: Iterable[Action]) -> None:
    """Each action of a decision, in order, on `executor`."""
    for action in actions:
        match action:
            case StartWorkload(workload):
                executor.start(workload)
            case StopWorkload(name, attempt):
                executor.stop(name, attempt)
            case RequestStop(name, attempt):
                executor.request_stop(name, attempt)
            case StartServing(model, serving):
                executor.start_serving(model, serving)
            case StopServing():
                executor.stop_serving()
            case Emit(type_, reason, message):
                executor.emit(type_, reason, message)
            case DeletePipeline():
                executor.delete_pipeline()
            case _:
                assert_never(action)

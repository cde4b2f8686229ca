"""The working state of one reconcile, and the moves every policy makes on it.

A `Context` carries the inputs (spec, the status being rewritten, observations, now) and collects
what the policies decide: actions, requeue delays, the earliest stage still at work (it names the
phase) and whether the pipeline is suspended. It lives for one call of `reconcile` and is never
kept: everything that must survive is written into `status`.

Stage bookkeeping, failing and succeeding the pipeline live here because every policy does them and
all of them must do them the same way (one event per transition, times set once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import (
    STAGE_CONDITIONS,
    PipelineStatus,
    StageName,
    StageState,
    StageStatus,
    TrialStatus,
    WorkloadStatus,
    rfc3339,
)
from conveyor.operator.engine import reasons
from conveyor.operator.engine.actions import Action, Decision, Emit, StartWorkload, StopWorkload
from conveyor.operator.engine.observations import Observations
from conveyor.operator.engine.workload_kinds import workload_for

Record = TrialStatus | WorkloadStatus
ACTIVE = ("Pending", "Running")  # record states whose workload should exist
TRIAL_DONE = ("Succeeded", "Failed", "Pruned")
FINISHED = ("Succeeded", "Failed")  # pipeline phases after which nothing more is decided


def records(status: PipelineStatus) -> list[Record]:
    """Every trial and workload record, trials first."""
    return [*status.trials, *status.workloads]


@dataclass
class Context:
    spec: TrainingPipelineSpec
    status: PipelineStatus  # the new status, rewritten in place
    observed: Observations
    now: datetime
    generation: int | None
    actions: list[Action] = field(default_factory=list)
    requeue: list[float] = field(default_factory=list)  # seconds until a reconcile is due anyway
    at_work: StageName | None = None  # the earliest stage still at work: it names the phase
    suspended: bool = False

    @property
    def ts(self) -> str:
        return rfc3339(self.now)

    def decision(self) -> Decision:
        """What this reconcile decided: its actions, the new status and the earliest requeue."""
        return Decision(tuple(self.actions), self.status, min(self.requeue) if self.requeue else None)

    def emit(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.actions.append(Emit(type_, reason, message))

    def start(self, name: str, attempt: int) -> None:
        self.actions.append(StartWorkload(workload_for(self.spec, self.status, name, attempt)))

    def working_on(self, stage: StageName) -> None:
        """Note that `stage` is at work; the phase names the earliest such stage."""
        self.at_work = self.at_work or stage

    def set_stage(
        self, name: StageName, state: StageState, reason: str | None = None, message: str | None = None
    ) -> None:
        """Move stage `name` to `state`; its times are set once and a success is announced once."""
        stage = self.status.stages.get(name)
        if stage is None:
            stage = StageStatus()
            setattr(self.status.stages, name, stage)
        if state == "Running" and stage.start_time is None:
            stage.start_time = self.ts
        if state in ("Succeeded", "Failed") and stage.completion_time is None:
            stage.completion_time = self.ts
        if state == "Succeeded" and stage.state != "Succeeded":
            self.emit("Normal", STAGE_CONDITIONS[name], message or f"{name} finished")
        stage.state = state
        if reason is not None or state != "Running":
            stage.reason, stage.message = reason, message

    def fail(self, reason: str, message: str, stage: StageName | None = None) -> None:
        """Fail the pipeline (and `stage`, if given), stopping every workload still running."""
        for rec in records(self.status):
            if rec.state in ACTIVE or rec.state == "Suspended":
                if rec.state in ACTIVE:
                    self.actions.append(StopWorkload(rec.name, rec.attempt, reasons.PIPELINE_FAILED, reason))
                rec.state, rec.reason, rec.message = "Failed", reasons.STOPPED, f"pipeline failed: {reason}"
                rec.completion_time = self.ts
        if stage is not None:
            self.set_stage(stage, "Failed", reason, message)
        self.status.phase, self.status.reason, self.status.message = "Failed", reason, message
        self.status.completion_time = self.ts
        self.emit("Warning", reason, message)

    def succeed(self) -> None:
        """The pipeline is done without serving."""
        if self.status.phase != "Succeeded":
            self.emit("Normal", reasons.SUCCEEDED, "the pipeline finished")
        self.status.phase, self.status.reason, self.status.message = "Succeeded", reasons.SUCCEEDED, None
        self.status.completion_time = self.status.completion_time or self.ts

"""A fake executor for engine tests: turns actions into synthetic observations, one epoch per tick.
It implements `conveyor.operator.executors.protocol.Executor`, so decisions reach it through the
drivers' own `carry_out`.

Metrics are a deterministic function of the trial's parameters, so tests can reason about which
trials are good (learning rates near 1e-2.5 and small dropout win) and about pruning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.engine import (
    Decision,
    EpochReport,
    Observations,
    ServingObservation,
    WorkloadObservation,
    active_workloads,
    reconcile,
)
from conveyor.operator.executors.protocol import carry_out
from conveyor.operator.workloads import Workload
from conveyor.trainer.config import ServingSpec

T0 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


def quality(params: dict[str, Any]) -> float:
    lr = float(params.get("optimizer.learningRate", 1e-3))
    dropout = float(params.get("model.dropout", 0.1))
    batch = float(params.get("training.batchSize", 64))
    score = 0.97 - 0.04 * (math.log10(lr) + 2.5) ** 2 - 0.1 * dropout - 0.0001 * abs(batch - 64)
    return max(0.05, min(0.995, score))


def curve(final: float, epoch: int) -> float:
    return round(final * (1 - 0.5 ** (epoch + 1)), 6)


@dataclass
class Run:
    workload: Workload
    epoch: int = 0
    state: str = "running"
    result: dict[str, Any] | None = None
    reports: list[EpochReport] = field(default_factory=list)


@dataclass
class FakeExecutor:
    spec: TrainingPipelineSpec
    fail: set[str] = field(default_factory=set)  # workload keys (name-attempt) that fail at their end
    fail_reason: str | None = None  # the failed workloads' own verdict (their result's reason)
    crash_on_exit: set[str] = field(default_factory=set)  # keys that exit non-zero after their result
    test_metric: float = 0.98
    epochs: int = 4
    runs: dict[str, Run] = field(default_factory=dict)  # by workload name: the latest attempt
    started: list[str] = field(default_factory=list)  # every key ever started
    duplicates: list[str] = field(default_factory=list)
    serving: ServingObservation | None = None
    stops: list[tuple[str, int]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def apply(self, decision: Decision) -> None:
        carry_out(self, decision.actions)

    def start(self, workload: Workload) -> None:
        if workload.key in self.started:
            self.duplicates.append(workload.key)
            return
        self.started.append(workload.key)
        self.runs[workload.name] = Run(workload)

    def stop(self, name: str, attempt: int) -> None:
        run = self.runs.get(name)
        self.stops.append((name, attempt))
        if run is not None and run.workload.attempt == attempt and run.state == "running":
            run.state = "failed"

    def start_serving(self, model: str, serving: ServingSpec) -> None:
        self.serving = ServingObservation(ready=True, model=model, url="http://127.0.0.1:8080")

    def stop_serving(self) -> None:
        self.serving = ServingObservation(ready=False)

    def emit(self, type: str, reason: str, message: str) -> None:
        self.events.append(f"{type} {reason}: {message}")

    def delete_pipeline(self) -> None:
        pass

    def observe(self, workloads: Iterable[tuple[str, int]], serving: bool) -> Observations:
        """As a driver asks: the workloads by (name, attempt), an attempt it does not run is lost."""
        runs = self.observations().workloads
        seen = {}
        for name, attempt in workloads:
            run = runs.get(name)
            current = run is not None and run.attempt == attempt
            seen[name] = run if run is not None and current else WorkloadObservation("lost", attempt)
        return Observations(seen, self.serving if serving else None)

    def _finish(self, run: Run) -> None:
        w = run.workload
        if w.key in self.fail:
            run.state = "failed"
            if self.fail_reason:
                run.result = {"status": "failed", "reason": self.fail_reason, "message": "no column 'label'"}
            return
        run.state = "succeeded"
        metric = self.spec.task.metric
        if w.command == "train":
            value = curve(quality(dict(w.params)), run.epoch)
            run.result = {
                "status": "succeeded",
                "objective": {"metric": metric, "value": value},
                "metrics": {metric: value},
            }
        elif w.command == "evaluate":
            run.result = {"status": "succeeded", "metrics": {metric: self.test_metric, "loss": 0.1}}
        else:
            run.result = {"status": "succeeded", "metrics": {}}
        if w.key in self.crash_on_exit:
            run.state = "failed"

    def tick(self) -> None:
        for run in self.runs.values():
            if run.state != "running":
                continue
            if run.workload.command != "train":
                self._finish(run)
                continue
            run.epoch += 1
            value = curve(quality(dict(run.workload.params)), run.epoch)
            run.reports.append(EpochReport(run.epoch, {self.spec.task.metric: value}, self.epochs))
            # Failing workloads crash after their first epoch; the others run all their epochs.
            if run.epoch >= self.epochs or run.workload.key in self.fail:
                self._finish(run)

    def observations(self) -> Observations:
        seen = {
            name: WorkloadObservation(
                state=run.state,  # type: ignore[arg-type]
                attempt=run.workload.attempt,
                epochs=tuple(run.reports),
                result=run.result,
            )
            for name, run in self.runs.items()
        }
        return Observations(workloads=seen, serving=self.serving)


def roundtrip(status: PipelineStatus) -> PipelineStatus:
    """What the API server gives back: the status as JSON, nothing else survives."""
    return PipelineStatus.model_validate(json.loads(json.dumps(status.to_wire())))


def simulate(
    spec: TrainingPipelineSpec,
    executor: FakeExecutor | None = None,
    steps: int = 400,
    status: PipelineStatus | None = None,
    repeat_every: int = 0,
    until: tuple[str, ...] = ("Succeeded", "Failed"),
) -> tuple[PipelineStatus, FakeExecutor, list[Decision]]:
    """Reconcile, apply, tick, with the status round-tripped through JSON at every step (the engine
    keeps no memory). `repeat_every` > 0 also replays a reconcile on the stale status (a lost write)."""
    executor = executor or FakeExecutor(spec)
    decisions = []
    now = T0
    for step in range(steps):
        seen = executor.observe(active_workloads(status), status is not None and status.serving is not None)
        decision = reconcile(spec, status, seen, now, generation=1)
        if repeat_every and step % repeat_every == 0:
            executor.apply(reconcile(spec, status, seen, now, generation=1))
        decisions.append(decision)
        executor.apply(decision)
        status = roundtrip(decision.status)
        if status.phase in until or (status.phase == "Serving" and status.serving and status.serving.ready):
            break
        executor.tick()
        now += timedelta(seconds=10)
    assert status is not None
    return status, executor, decisions

"""Observations into status: what the executor saw since the last reconcile, folded into the records
of the workloads it saw, before any policy decides anything. Executors report facts only
(`observations`); what they mean is decided here, once, for every executor:

- Only the attempt a record is at, and only while it is Pending or Running: an observation of
  another attempt is stale, and a finished record is never reopened. A pruned trial whose user loop
  is still `stopping` (see `stopping`) takes one fact only: that its workload is gone. What it
  reported or wrote after the decision, a result included, never turns Pruned into anything else.
- A result is the durable verdict, whatever state the executor saw: rank 0 writes it after the last
  collective, so every rank has finished its work. It counts while other processes still run (they
  are exiting), over a non-zero exit (gloo aborts now and then at interpreter teardown: "terminate
  called without an active exception"; the work is kept, with a Warning event), and for a workload
  the executor lost whose result survived (an interrupted `conveyor run`).
- Without a result, a workload that exited successfully is Failed (NoResult): every trainer command
  writes one, so its output cannot be trusted (retried like any failure; a trial is not).
- Why a workload failed: its result's reason, else the one the executor saw, else WorkloadFailed.
- A trial's value is its result's objective, else its best per-epoch value; a trial whose result has
  neither is Failed (NoObjective). A user loop's reports carry the step each was made at: kept in
  `steps` next to `values` (pruners count steps for it, see `tuning`).
- A failure's message is the result's (for UserCodeError the last lines of the user's traceback),
  its end kept within MESSAGE_LIMIT characters: the end of a traceback is what names the line.
- A `lost` workload without a result is marked Suspended (reason Lost) and started again as its next
  attempt by `lifecycle.resume`; no failure is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from conveyor.operator.api.status import ServingStatus, TrialStatus, WorkloadStatus, parse_time, rfc3339
from conveyor.operator.engine import reasons
from conveyor.operator.engine.context import ACTIVE, TRIAL_DONE, Context, Record, records
from conveyor.operator.engine.observations import (
    EpochReport,
    ObservedState,
    ServingObservation,
    WorkloadObservation,
)

Result = dict[str, Any] | None
MESSAGE_LIMIT = 2048  # a failure's message in status, well within a condition's 4096
GONE = ("succeeded", "failed", "lost")


def absorb(ctx: Context) -> None:
    """Fold the observations of every current record and of serving into status."""
    for rec in records(ctx.status):
        _absorb_record(ctx, rec)
    if ctx.observed.serving is not None and ctx.status.serving is not None:
        absorb_serving(ctx.status.serving, ctx.observed.serving)


def absorb_serving(serving: ServingStatus, seen: ServingObservation) -> None:
    """Serving is ready only while the executor serves the model status asks for."""
    serving.ready = seen.ready and (seen.model in (None, serving.model))
    serving.url = seen.url or serving.url
    serving.ready_replicas = seen.ready_replicas
    serving.reason = seen.reason
    serving.message = seen.message


def _absorb_record(ctx: Context, rec: Record) -> None:
    seen = ctx.observed.workloads.get(rec.name)
    if seen is None or seen.attempt != rec.attempt:
        return
    if isinstance(rec, TrialStatus) and rec.stopping:
        if seen.state in GONE:
            rec.stopping = None
        return
    if rec.state not in ACTIVE:
        return
    if seen.started_at is not None and rec.start_time is None:
        rec.start_time = rfc3339(seen.started_at)
    if seen.epochs:
        _absorb_epochs(ctx, rec, seen.epochs)
    result = dict(seen.result) if seen.result is not None else None
    state = verdict(seen.state, result)
    if seen.state == "failed" and state == "succeeded":
        ctx.emit(
            "Warning",
            reasons.EXITED_AFTER_RESULT,
            f"{rec.name} (attempt {rec.attempt}) exited with an error after writing its result; "
            f"the result is kept ({seen.reason or 'process failed'})",
        )
    ON_STATE[state](ctx, rec, seen, result)
    if isinstance(rec, TrialStatus) and rec.state in TRIAL_DONE:
        seconds = duration_seconds(rec.start_time, rec.completion_time)
        if seconds is not None:
            rec.duration_seconds = seconds


def verdict(state: ObservedState, result: Mapping[str, Any] | None) -> ObservedState:
    """The state to record: the result's own verdict when there is one, else what the executor saw,
    except that succeeding without a result is a failure."""
    if result is not None:
        return "succeeded" if result.get("status", "succeeded") == "succeeded" else "failed"
    return "failed" if state == "succeeded" else state


def failure_of(seen: WorkloadObservation, result: Mapping[str, Any] | None) -> tuple[str, str]:
    """(reason, message) of a failed workload: the result's own, else what the executor saw, else
    NoResult for one that exited successfully without a result."""
    if result is not None and result.get("reason"):
        return str(result["reason"]), str(result.get("message") or "")[-MESSAGE_LIMIT:]
    if seen.reason:
        return seen.reason, seen.message or ""
    if result is None and seen.state == "succeeded":
        return reasons.NO_RESULT, "it exited successfully without writing a result"
    return reasons.WORKLOAD_FAILED, str((result or {}).get("message") or seen.message or "")


def _absorb_epochs(ctx: Context, rec: Record, epochs: tuple[EpochReport, ...]) -> None:
    last = max(epochs, key=lambda e: e.epoch)
    rec.epoch = last.epoch
    rec.epochs = last.epochs or rec.epochs
    if isinstance(rec, TrialStatus):
        rec.values = epoch_values(rec.values, epochs, ctx.spec.task.metric)
        if ctx.spec.training.user_loop:
            rec.steps = report_steps(rec.steps or [], epochs, len(rec.values))


def report_steps(steps: list[int | None], reports: Iterable[EpochReport], count: int) -> list[int | None]:
    """The step of each of a user loop's reports (index 0 = report 1), `count` long (as its values)."""
    steps = [*steps, *[None] * (count - len(steps))][:count]
    for report in reports:
        if 1 <= report.epoch <= count and report.step is not None:
            steps[report.epoch - 1] = report.step
    return steps


def epoch_values(
    values: list[float | None], reports: Iterable[EpochReport], metric: str
) -> list[float | None]:
    """A trial's objective per epoch (index 0 = epoch 1), with the reports' values filled in."""
    values = list(values)
    for report in reports:
        value = report.metrics.get(metric)
        if report.epoch < 1 or value is None:
            continue
        values.extend([None] * (report.epoch - len(values)))
        values[report.epoch - 1] = round(float(value), 6)
    return values


def objective_of(values: list[float | None], result: Result, maximize: bool) -> float | None:
    """A trial's final value: its result's objective, else its best per-epoch value."""
    objective = (result or {}).get("objective") or {}
    if isinstance(objective, dict) and isinstance(objective.get("value"), int | float):
        return float(objective["value"])
    reported = [v for v in values if v is not None]
    if not reported:
        return None
    return max(reported) if maximize else min(reported)


def numeric_metrics(result: Result) -> dict[str, float] | None:
    """A workload's final metrics: the numbers of its result's `metrics`, None if there are none."""
    metrics = (result or {}).get("metrics") or {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)} or None


def duration_seconds(start: str | None, end: str | None) -> float | None:
    """Seconds from `start` to `end` (never negative), None unless both are known."""
    began, ended = parse_time(start), parse_time(end)
    if began is None or ended is None:
        return None
    return max(0.0, (ended - began).total_seconds())


def _finished_at(ctx: Context, seen: WorkloadObservation) -> str:
    return rfc3339(seen.finished_at) if seen.finished_at else ctx.ts


def _pending(ctx: Context, rec: Record, seen: WorkloadObservation, result: Result) -> None:
    rec.state = "Pending"
    if seen.reason is None:
        return
    # A start that is stuck (an image that cannot be pulled, a missing Secret) is said in status and
    # once per cause as a Warning, so `kubectl describe` tells why nothing happens.
    why = f"{seen.reason}: {seen.message}" if seen.message else seen.reason
    if (rec.reason, rec.message) != (reasons.NOT_STARTING, why):
        rec.reason, rec.message = reasons.NOT_STARTING, why
        message = f"{rec.name} (attempt {rec.attempt}) is not starting: {why}"
        ctx.emit("Warning", reasons.NOT_STARTING, message)


def _running(ctx: Context, rec: Record, seen: WorkloadObservation, result: Result) -> None:
    if rec.reason == reasons.NOT_STARTING:
        rec.reason, rec.message = None, None
    rec.state = "Running"
    rec.start_time = rec.start_time or ctx.ts


def _succeeded(ctx: Context, rec: Record, seen: WorkloadObservation, result: Result) -> None:
    rec.state, rec.completion_time = "Succeeded", _finished_at(ctx, seen)
    rec.reason, rec.message = None, None
    if isinstance(rec, WorkloadStatus):
        rec.metrics = numeric_metrics(result)
        return
    rec.value = objective_of(rec.values, result, ctx.spec.task.maximize)
    if rec.value is None:
        rec.state, rec.reason = "Failed", reasons.NO_OBJECTIVE
        rec.message = f"the trial reported no {ctx.spec.task.metric}"


def _failed(ctx: Context, rec: Record, seen: WorkloadObservation, result: Result) -> None:
    rec.state, rec.completion_time = "Failed", _finished_at(ctx, seen)
    rec.reason, rec.message = failure_of(seen, result)
    if isinstance(rec, WorkloadStatus):
        rec.failures += 1  # trials are not retried: their failures count against maxFailedTrials
    ctx.emit(
        "Warning",
        reasons.WORKLOAD_FAILED,
        f"{rec.name} (attempt {rec.attempt}): {rec.reason}: {rec.message}",
    )


def _lost(ctx: Context, rec: Record, seen: WorkloadObservation, result: Result) -> None:
    rec.state, rec.reason = "Suspended", reasons.LOST
    rec.message = seen.message or "the workload disappeared without a result; starting it again"


# What each observed state does to the record of the current attempt.
ON_STATE: dict[ObservedState, Callable[[Context, Record, WorkloadObservation, Result], None]] = {
    "pending": _pending,
    "running": _running,
    "succeeded": _succeeded,
    "failed": _failed,
    "lost": _lost,
}

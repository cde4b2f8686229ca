"""The pipeline's lifecycle around its stages: suspension, lost workloads, the active deadline and the
TTL after it finished. These stop or restart workloads, or end the whole pipeline, whatever stage
it is at.

- `suspend` stops every running workload (and serving); their records move to Suspended and start
  again as their next attempt (from their checkpoints) on unsuspend. Trials are kept.
- A workload an executor reports `lost` is started again as its next attempt; no failure is counted.
  `active_workloads` tells executors which workloads should exist, so they can report the rest lost.
- `activeDeadlineSeconds` counts from status.startTime until the pipeline finishes or serves.
- `ttlSecondsAfterFinished` applies to Succeeded and Failed pipelines, never to a serving one.
"""

from __future__ import annotations

from datetime import datetime

from conveyor.operator.api.status import PipelineStatus, TrialStatus, parse_time
from conveyor.operator.engine import reasons
from conveyor.operator.engine.actions import DeletePipeline, StopServing, StopWorkload
from conveyor.operator.engine.context import ACTIVE, Context, records

SUSPEND_MESSAGE = "spec.suspend is true"


def active_workloads(status: PipelineStatus | None) -> list[tuple[str, int]]:
    """(name, attempt) of every workload status says should exist now: executors report `lost` for
    the ones they cannot find. A pruned trial still `stopping` is among them, so the engine sees it go."""
    if status is None:
        return []
    return [
        (r.name, r.attempt)
        for r in records(status)
        if r.state in ACTIVE or (isinstance(r, TrialStatus) and r.stopping)
    ]


def remaining_seconds(limit: float, since: datetime, now: datetime) -> float:
    """Seconds left of `limit` counted from `since`; zero or less once it ran out."""
    return limit - (now - since).total_seconds()


def suspend(ctx: Context) -> None:
    """Stop every running workload and serving; announce the suspension once."""
    ctx.suspended = True
    for rec in records(ctx.status):
        if rec.state in ACTIVE:
            ctx.actions.append(StopWorkload(rec.name, rec.attempt, reasons.SUSPENDED, SUSPEND_MESSAGE))
            rec.state, rec.reason, rec.message = "Suspended", reasons.SUSPENDED, "stopped by spec.suspend"
    serve = ctx.status.stages.serve
    if serve is not None and serve.state in ("Running", "Succeeded"):
        ctx.actions.append(StopServing(reasons.SUSPENDED))
        serve.state = "Pending"
        if ctx.status.serving is not None:
            ctx.status.serving.ready = False
    current = ctx.status.condition("Suspended")
    if current is None or current.status != "True":
        ctx.emit("Normal", reasons.SUSPENDED, f"{SUSPEND_MESSAGE}: running workloads stopped, trials kept")


def resume(ctx: Context) -> None:
    """Start every suspended or lost workload again as its next attempt; announce an unsuspend once."""
    for rec in records(ctx.status):
        if rec.state == "Suspended":
            why = "resumed" if rec.reason == reasons.SUSPENDED else "lost"
            rec.attempt += 1
            rec.state, rec.reason = "Pending", reasons.RESTARTED
            rec.message = f"attempt {rec.attempt} ({why})"
            ctx.start(rec.name, rec.attempt)
    current = ctx.status.condition("Suspended")
    if current is not None and current.status == "True":
        ctx.emit("Normal", reasons.RESUMED, "spec.suspend is false: continuing")


def deadline_exceeded(ctx: Context) -> bool:
    """Fail the pipeline once it ran past activeDeadlineSeconds (True), else requeue for that moment."""
    limit = ctx.spec.active_deadline_seconds
    if limit is None or ctx.status.phase == "Serving":
        return False
    began = parse_time(ctx.status.start_time)
    assert began is not None
    remaining = remaining_seconds(limit, began, ctx.now)
    if remaining > 0:
        ctx.requeue.append(remaining)
        return False
    ctx.fail(reasons.DEADLINE_EXCEEDED, f"the pipeline ran longer than activeDeadlineSeconds ({limit}s)")
    return True


def expire(ctx: Context) -> None:
    """Delete a finished pipeline once ttlSecondsAfterFinished ran out, else requeue for that moment."""
    ttl = ctx.spec.ttl_seconds_after_finished
    finished = parse_time(ctx.status.completion_time)
    if ttl is None or finished is None:
        return
    remaining = remaining_seconds(ttl, finished, ctx.now)
    if remaining <= 0:
        ctx.actions.append(DeletePipeline(reasons.TTL_EXPIRED))
    else:
        ctx.requeue.append(remaining)

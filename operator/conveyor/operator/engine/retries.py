"""Running one non-trial workload (prepare, train, the evaluations, the ensemble) to success.

A failed workload is retried up to `backoffLimit` times, each retry resuming from its checkpoint. A
permanent failure (invalid config or data, see `conveyor.operator.workloads.PERMANENT_REASONS`) is
never retried: no retry can fix it. When no retry is left the pipeline fails with the kind's own
reason (`workload_kinds.KINDS`). Trials are not retried: a failed trial counts against
`tuning.maxFailedTrials` instead (see `trials`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from conveyor.operator.api.status import WorkloadStatus
from conveyor.operator.engine import reasons, workload_kinds
from conveyor.operator.engine.context import Context
from conveyor.operator.workloads import PERMANENT_REASONS

FailureAction = Literal["Retry", "FailPipeline"]


def run(ctx: Context, name: str) -> bool:
    """Start workload `name`, record its result or handle its failure; True once it has succeeded."""
    kind = workload_kinds.KINDS[name]
    rec = ctx.status.workload(name)
    if rec is None:
        ctx.status.workloads.append(WorkloadStatus(name=name, stage=kind.stage))
        ctx.start(name, 0)
        ctx.working_on(kind.stage)
        ctx.set_stage(kind.stage, "Running")
        return False
    if rec.state == "Succeeded":
        message = workload_kinds.record_result(ctx.spec, ctx.status, rec)
        if message is not None:
            ctx.set_stage(kind.stage, "Succeeded", reasons.COMPLETED, message)
        return True
    ctx.working_on(kind.stage)
    ctx.set_stage(kind.stage, "Running")
    if rec.state == "Failed":
        ON_FAILURE[failure_action(rec, ctx.spec.backoff_limit)](ctx, rec)
    return False


def failure_action(rec: WorkloadStatus, backoff_limit: int) -> FailureAction:
    """Retry while the failures stay within backoffLimit and none of them is permanent."""
    if rec.failures <= backoff_limit and rec.reason not in PERMANENT_REASONS:
        return "Retry"
    return "FailPipeline"


def failure_message(rec: WorkloadStatus, backoff_limit: int) -> str:
    """Why the pipeline fails with `rec`: its permanent failure, or its last one and the count."""
    if rec.reason in PERMANENT_REASONS:
        return f"{rec.name} failed: {rec.reason}: {rec.message}"
    return (
        f"{rec.name} failed {rec.failures} time(s) (backoffLimit {backoff_limit}); "
        f"last: {rec.reason}: {rec.message}"
    )


def _retry(ctx: Context, rec: WorkloadStatus) -> None:
    rec.attempt += 1
    rec.state = "Pending"
    rec.completion_time = None
    ctx.emit(
        "Warning",
        reasons.RETRYING,
        f"{rec.name}: attempt {rec.attempt} after {rec.reason} (backoffLimit {ctx.spec.backoff_limit})",
    )
    ctx.start(rec.name, rec.attempt)


def _fail_pipeline(ctx: Context, rec: WorkloadStatus) -> None:
    kind = workload_kinds.KINDS[rec.name]
    ctx.fail(kind.failure, failure_message(rec, ctx.spec.backoff_limit), kind.stage)


ON_FAILURE: dict[FailureAction, Callable[[Context, WorkloadStatus], None]] = {
    "Retry": _retry,
    "FailPipeline": _fail_pipeline,
}

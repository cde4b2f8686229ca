"""The moves every policy makes: stage bookkeeping, failing and succeeding the pipeline, the phase's
stage at work, and the decision a reconcile returns."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conveyor.operator.api.status import PipelineStatus, TrialState, TrialStatus, WorkloadStatus
from conveyor.operator.engine import Emit, Observations, StopWorkload
from conveyor.operator.engine.context import Context, records
from tests.helpers.specs import make_spec
from tests.unit.simulation import T0


def context(status: PipelineStatus | None = None, minutes: int = 0) -> Context:
    spec = make_spec(tuning=None, ensemble=None, serving=None)
    return Context(spec, status or PipelineStatus(), Observations(), T0 + timedelta(minutes=minutes), None)


def events(ctx: Context) -> list[tuple[str, str]]:
    return [(a.reason, a.message) for a in ctx.actions if isinstance(a, Emit)]


def test_a_stage_keeps_its_times_and_announces_success_once() -> None:
    status = PipelineStatus()
    context(status).set_stage("train", "Running")
    later = context(status, minutes=5)
    later.set_stage("train", "Succeeded", "Completed", "final model trained")
    context(status, minutes=9).set_stage("train", "Succeeded", "Completed", "final model trained")
    stage = status.stages.train
    assert stage is not None and (stage.state, stage.reason) == ("Succeeded", "Completed")
    assert (stage.start_time, stage.completion_time) == ("2026-11-23T06:00:00Z", "2026-11-23T06:05:00Z")
    assert events(later) == [("Trained", "final model trained")]


@pytest.mark.parametrize(
    ("state", "stopped", "after"),
    [
        ("Running", True, "Failed"),
        ("Pending", True, "Failed"),
        ("Suspended", False, "Failed"),
        ("Succeeded", False, "Succeeded"),
        ("Pruned", False, "Pruned"),
    ],
)
def test_failing_the_pipeline_stops_what_still_runs(state: TrialState, stopped: bool, after: str) -> None:
    trial = TrialStatus(name="trial-0000", number=0, state=state)
    ctx = context(PipelineStatus(trials=[trial]))
    ctx.fail("TrialFailedLimitExceeded", "too many", "tune")
    assert bool([a for a in ctx.actions if isinstance(a, StopWorkload)]) == stopped
    assert trial.state == after
    st = ctx.status
    assert (st.phase, st.reason, st.message) == ("Failed", "TrialFailedLimitExceeded", "too many")
    assert ctx.status.stages.tune is not None and ctx.status.stages.tune.state == "Failed"
    assert events(ctx)[-1] == ("TrialFailedLimitExceeded", "too many")


def test_success_is_announced_once() -> None:
    status = PipelineStatus()
    first, again = context(status), context(status, minutes=1)
    first.succeed()
    again.succeed()
    assert events(first) == [("Succeeded", "the pipeline finished")] and events(again) == []
    assert status.completion_time == "2026-11-23T06:00:00Z"


def test_the_phase_names_the_earliest_stage_at_work() -> None:
    ctx = context()
    ctx.working_on("train")
    ctx.working_on("ensemble")
    assert ctx.at_work == "train"


def test_the_decision_requeues_at_the_earliest_moment() -> None:
    ctx = context()
    assert ctx.decision().requeue_after is None
    ctx.requeue.extend([30.0, 5.0, 60.0])
    assert ctx.decision().requeue_after == 5.0


def test_records_are_trials_then_workloads() -> None:
    status = PipelineStatus(
        workloads=[WorkloadStatus(name="prepare", stage="prepare")],
        trials=[TrialStatus(name="trial-0000", number=0)],
    )
    assert [r.name for r in records(status)] == ["trial-0000", "prepare"]

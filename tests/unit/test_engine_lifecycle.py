"""The lifecycle around the stages: lost workloads, suspend and resume, the active deadline and the
TTL after finishing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conveyor.operator.engine import (
    DeletePipeline,
    Observations,
    StartWorkload,
    StopServing,
    StopWorkload,
    WorkloadObservation,
    active_workloads,
    reconcile,
)
from conveyor.operator.engine.lifecycle import remaining_seconds
from tests.helpers.specs import make_spec, small_tuning
from tests.unit.simulation import T0, FakeExecutor, roundtrip, simulate


def test_lost_workloads_restart_as_next_attempt_without_counting_a_failure() -> None:
    spec = make_spec(tuning=small_tuning(maxFailedTrials=0))
    executor = FakeExecutor(spec)
    status, executor, _ = simulate(spec, executor, steps=4, until=("Tuning",))
    assert status.phase == "Tuning"
    lost = next(t for t in status.trials if t.state in ("Pending", "Running"))
    # The executor restarted and knows nothing of this trial any more.
    observations = executor.observations()
    seen = dict(observations.workloads)
    seen[lost.name] = WorkloadObservation(state="lost", attempt=lost.attempt)
    decision = reconcile(spec, status, Observations(seen, observations.serving), T0 + timedelta(minutes=5))
    starts = [a.workload for a in decision.actions if isinstance(a, StartWorkload)]
    assert [(w.name, w.attempt) for w in starts] == [(lost.name, 1)]
    assert starts[0].params == lost.params
    trial = decision.status.trial(lost.name)
    assert trial is not None and trial.state == "Pending" and trial.attempt == 1
    assert decision.status.phase == "Tuning"


def test_active_workloads_lists_what_should_exist() -> None:
    spec = make_spec(tuning=small_tuning())
    status, _, _ = simulate(spec, steps=3, until=("Tuning",))
    active = active_workloads(status)
    assert active and all(name.startswith("trial-") and attempt == 0 for name, attempt in active)
    assert active_workloads(None) == []


def test_suspend_stops_everything_and_resume_continues() -> None:
    spec = make_spec(tuning=small_tuning(trials=6, parallelism=2))
    status, executor, _ = simulate(spec, steps=4, until=("Tuning",))
    running = {t.name for t in status.trials if t.state in ("Pending", "Running")}
    assert running
    suspended_spec = spec.model_copy(update={"suspend": True})
    decision = reconcile(suspended_spec, status, executor.observations(), T0 + timedelta(minutes=2))
    executor.apply(decision)
    assert decision.status.phase == "Suspended"
    assert {a.name for a in decision.actions if isinstance(a, StopWorkload)} == running
    assert not any(isinstance(a, StartWorkload) for a in decision.actions)
    assert decision.status.condition("Suspended").status == "True"  # type: ignore[union-attr]
    # While suspended nothing starts, however often it reconciles.
    again = reconcile(
        suspended_spec, roundtrip(decision.status), executor.observations(), T0 + timedelta(minutes=3)
    )
    assert not any(isinstance(a, StartWorkload) for a in again.actions)
    # Resume: the suspended trials start again as attempt 1, and the run completes exactly.
    status, executor, _ = simulate(spec, executor, status=roundtrip(again.status))
    assert status.phase == "Serving" and len(status.trials) == 6
    assert {t.name for t in status.trials if t.attempt == 1} == running
    assert status.condition("Suspended").status == "False"  # type: ignore[union-attr]
    assert status.condition("Suspended").reason == "Resumed"  # type: ignore[union-attr]


def test_suspend_stops_serving() -> None:
    spec = make_spec(tuning=small_tuning())
    status, executor, _ = simulate(spec)
    assert status.phase == "Serving"
    decision = reconcile(spec.model_copy(update={"suspend": True}), status, executor.observations(), T0)
    assert any(isinstance(a, StopServing) for a in decision.actions)
    assert decision.status.phase == "Suspended"


def test_deadline_fails_the_pipeline() -> None:
    spec = make_spec(tuning=small_tuning(), activeDeadlineSeconds=60)
    status, _, decisions = simulate(spec)
    assert status.phase == "Failed" and status.reason == "DeadlineExceeded"
    assert decisions[0].requeue_after == 60
    assert any(isinstance(a, StopWorkload) for a in decisions[-1].actions)


def test_ttl_deletes_finished_pipelines() -> None:
    spec = make_spec(tuning=None, ensemble=None, serving=None, ttlSecondsAfterFinished=300)
    status, executor, _ = simulate(spec)
    assert status.phase == "Succeeded" and status.completion_time is not None
    soon = reconcile(spec, status, executor.observations(), T0 + timedelta(minutes=1))
    assert not soon.of(DeletePipeline) and soon.requeue_after is not None
    later = reconcile(spec, status, executor.observations(), T0 + timedelta(hours=1))
    assert later.of(DeletePipeline)


@pytest.mark.parametrize(
    ("limit", "elapsed", "remaining"),
    [(60, 0, 60.0), (60, 45, 15.0), (60, 60, 0.0), (60, 90, -30.0), (0, 0, 0.0)],
)
def test_remaining_seconds(limit: int, elapsed: int, remaining: float) -> None:
    assert remaining_seconds(limit, T0, T0 + timedelta(seconds=elapsed)) == remaining

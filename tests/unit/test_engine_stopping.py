"""A pruned trial, end to end through `reconcile`: a user loop is Pruned at the decision, asked to stop
on every reconcile of its grace period (with a requeue for its end), then stopped; a result that
arrives after the decision never turns it back into Succeeded; Conveyor's own loop is stopped at once;
suspension, a failed pipeline or a zero grace period stop it at once too."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import PipelineStatus, TrialStatus, rfc3339
from conveyor.operator.engine import (
    Decision,
    EpochReport,
    Observations,
    RequestStop,
    StopWorkload,
    WorkloadObservation,
    active_workloads,
    reconcile,
)
from tests.helpers.specs import make_spec, small_tuning
from tests.unit.simulation import T0, roundtrip, simulate

GRACE = 60
LIVE = "trial-0001"


def spec_for(
    user_loop: bool = True, grace: int = GRACE, max_failed: int = 2, **changes: Any
) -> TrainingPipelineSpec:
    training: dict[str, Any] = {"epochs": 30, "batchSize": 64}
    if user_loop:
        training.update(entrypoint="mypkg.loop:train", maxSteps=900)
    tuning = small_tuning(pruner="median", stopGracePeriodSeconds=grace, maxFailedTrials=max_failed)
    return make_spec(training=training, tuning=tuning, **changes)


def tuning_status(spec: TrainingPipelineSpec) -> PipelineStatus:
    """Tuning under way: trial-0000 finished well, trial-0001 running with nothing reported yet."""
    status, _, _ = simulate(spec, steps=3, until=("Tuning",))
    done, live = status.trials
    done.state, done.value = "Succeeded", 0.9
    done.values, done.steps = [0.8, 0.85, 0.9], [90, 180, 270]
    done.start_time = done.completion_time = live.start_time = rfc3339(T0 - timedelta(minutes=5))
    live.state = "Running"
    return status


def seen(state: str = "running", result: dict[str, Any] | None = None, **reports: float) -> Observations:
    """trial-0001 observed in `state`, having reported accuracy `value` at each `s<step>=value`."""
    epochs = tuple(
        EpochReport(n, {"accuracy": value}, 10, step=int(at.removeprefix("s")))
        for n, (at, value) in enumerate(reports.items(), start=1)
    )
    observation = WorkloadObservation(state, attempt=0, epochs=epochs, result=result)  # type: ignore[arg-type]
    return Observations({LIVE: observation})


def live(decision: Decision) -> TrialStatus:
    trial = decision.status.trial(LIVE)
    assert trial is not None
    return trial


def asked(decision: Decision) -> list[str]:
    return [a.name for a in decision.of(RequestStop)]  # type: ignore[attr-defined]


def stopped(decision: Decision) -> list[str]:
    return [a.name for a in decision.of(StopWorkload)]  # type: ignore[attr-defined]


def pruned(spec: TrainingPipelineSpec) -> Decision:
    """The reconcile that prunes trial-0001 at step 90 (0.1, against the finished trial's 0.8)."""
    return reconcile(spec, tuning_status(spec), seen(s90=0.1), T0, generation=1)


def test_a_pruned_user_loop_is_asked_to_stop_then_stopped_after_its_grace_period() -> None:
    spec = spec_for()
    first = pruned(spec)
    trial = live(first)
    assert (trial.state, trial.reason, trial.stopping) == ("Pruned", "Pruned", True)
    assert trial.completion_time == rfc3339(T0)  # the decision's time
    assert trial.steps == [90] and trial.values == [0.1]
    assert "after step 90" in (trial.message or "")
    assert asked(first) == [LIVE] and LIVE not in stopped(first)
    assert first.requeue_after == GRACE
    assert (LIVE, 0) in active_workloads(first.status)  # observed until it is gone
    assert first.status.tuning is not None and first.status.tuning.pruned == 1

    # Half-way: still running (and still reporting): asked again, requeued for the rest.
    later = reconcile(spec, roundtrip(first.status), seen(s90=0.1, s180=0.95), T0 + timedelta(seconds=30))
    assert asked(later) == [LIVE] and LIVE not in stopped(later)
    assert later.requeue_after == GRACE - 30
    assert live(later).state == "Pruned" and live(later).values == [0.1]  # the decision stands

    # The grace period is over: stopped as Conveyor's loop would have been, and no longer asked.
    end = reconcile(spec, roundtrip(later.status), seen(s90=0.1), T0 + timedelta(seconds=GRACE))
    assert stopped(end) == [LIVE] and not asked(end)
    [stop] = end.of(StopWorkload)
    assert stop.reason == "Pruned" and "stopGracePeriodSeconds" in stop.message  # type: ignore[attr-defined]
    assert live(end).stopping is None and live(end).state == "Pruned"
    assert (LIVE, 0) not in active_workloads(end.status)
    after = reconcile(spec, roundtrip(end.status), Observations(), T0 + timedelta(seconds=GRACE + 10))
    assert not asked(after) and LIVE not in stopped(after)


@pytest.mark.parametrize("state", ["succeeded", "failed", "lost"])
def test_a_result_after_the_decision_never_unprunes_the_trial(state: str) -> None:
    spec = spec_for()
    first = pruned(spec)
    result = {"status": "succeeded", "objective": {"metric": "accuracy", "value": 0.99}}
    gone = reconcile(spec, roundtrip(first.status), seen(state, result, s90=0.1), T0 + timedelta(seconds=20))
    trial = live(gone)
    assert (trial.state, trial.value, trial.stopping) == ("Pruned", None, None)
    assert not asked(gone) and LIVE not in stopped(gone)
    assert gone.status.best_trial is not None and gone.status.best_trial.name == "trial-0000"


def test_conveyors_own_loop_is_stopped_at_once() -> None:
    spec = spec_for(user_loop=False)  # warm-up: a tenth of 30 epochs; events' steps are not kept
    first = reconcile(spec, tuning_status(spec), seen(s1=0.1, s2=0.1, s3=0.1), T0, generation=1)
    trial = live(first)
    assert (trial.state, trial.stopping, trial.steps) == ("Pruned", None, None)
    assert "after epoch 3" in (trial.message or "")
    assert stopped(first) == [LIVE] and not asked(first)


def test_no_grace_period_stops_a_user_loop_at_once() -> None:
    first = pruned(spec_for(grace=0))
    assert stopped(first) == [LIVE] and not asked(first)
    assert live(first).stopping is None


@pytest.mark.parametrize("why", ["suspend", "fail"])
def test_a_suspended_or_failed_pipeline_stops_a_stopping_trial_at_once(why: str) -> None:
    spec = spec_for()
    first = pruned(spec)
    status = roundtrip(first.status)
    if why == "suspend":
        spec = spec_for(suspend=True)
        observed = seen(s90=0.1)
    else:  # the other running trial fails, one more than maxFailedTrials (0) allows
        spec = spec_for(max_failed=0)
        status.trials[-1].state = "Running"
        other = status.trials[-1].name
        observed = Observations(
            {
                LIVE: seen(s90=0.1).workloads[LIVE],
                other: WorkloadObservation("failed", reason="ExitCode", message="code 1"),
            }
        )
    decision = reconcile(spec, status, observed, T0 + timedelta(seconds=10))
    assert LIVE in stopped(decision) and not asked(decision)
    assert live(decision).state == "Pruned" and live(decision).stopping is None
    if why == "fail":
        assert decision.status.phase == "Failed"

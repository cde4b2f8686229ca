"""Observations into status: the durable verdict of a result, success without one (NoResult), why a
workload failed, per-epoch values, a trial's objective, stale observations, and serving."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, get_args

import pytest

from conveyor.operator.api.status import (
    PipelineStatus,
    ServingStatus,
    TrialStatus,
    WorkloadState,
    WorkloadStatus,
)
from conveyor.operator.engine import (
    Emit,
    EpochReport,
    Observations,
    ServingObservation,
    WorkloadObservation,
    reasons,
    reconcile,
)
from conveyor.operator.engine.absorb import (
    MESSAGE_LIMIT,
    ON_STATE,
    absorb,
    absorb_serving,
    duration_seconds,
    epoch_values,
    failure_of,
    numeric_metrics,
    objective_of,
    verdict,
)
from conveyor.operator.engine.context import Context
from conveyor.operator.engine.observations import ObservedState
from tests.helpers.specs import make_spec, small_tuning
from tests.unit.simulation import T0, FakeExecutor, simulate


def test_a_crash_after_the_result_keeps_the_result() -> None:
    spec = make_spec(tuning=small_tuning())
    executor = FakeExecutor(spec, crash_on_exit={"trial-0002-0", "train-0"})
    status, executor, decisions = simulate(spec, executor)
    assert status.phase == "Serving"
    trial = next(t for t in status.trials if t.name == "trial-0002")
    assert trial.state == "Succeeded" and trial.value is not None and trial.reason is None
    train = status.workload("train")
    assert train is not None and train.state == "Succeeded" and train.failures == 0
    assert [k for k in executor.started if k.startswith(("train-", "trial-0002-"))] == [
        "trial-0002-0",
        "train-0",
    ]
    warnings = [
        a.message for d in decisions for a in d.actions if isinstance(a, Emit) and a.type == "Warning"
    ]
    assert sorted(w.split(" ")[0] for w in warnings) == ["train", "trial-0002"]
    assert all("result is kept" in w for w in warnings)


@pytest.mark.parametrize(
    ("seen", "result", "recorded"),
    [
        ("running", None, "running"),
        ("failed", None, "failed"),
        ("failed", {"status": "succeeded"}, "succeeded"),
        ("failed", {}, "succeeded"),  # a result without a status is a success
        ("succeeded", {"status": "failed"}, "failed"),
        ("running", {"status": "succeeded"}, "succeeded"),  # rank 0 wrote it; the pod is still exiting
        ("lost", {"status": "succeeded"}, "succeeded"),  # the processes are gone, their result is not
        ("lost", {"status": "failed"}, "failed"),
        ("lost", None, "lost"),
        ("succeeded", None, "failed"),  # exited 0 without a result: NoResult
        ("pending", None, "pending"),
    ],
)
def test_the_result_is_the_verdict(seen: ObservedState, result: dict[str, Any] | None, recorded: str) -> None:
    assert verdict(seen, result) == recorded


@pytest.mark.parametrize(
    ("seen", "result", "why"),
    [
        (WorkloadObservation("failed", reason="ExitCode", message="code 1"), None, ("ExitCode", "code 1")),
        (  # the trainer's own verdict over the exit code it caused
            WorkloadObservation("failed", reason="InvalidInput", message="exit 2"),
            {"status": "failed", "reason": "DataError", "message": "no column 'label'"},
            ("DataError", "no column 'label'"),
        ),
        (
            WorkloadObservation("succeeded"),
            None,
            ("NoResult", "it exited successfully without writing a result"),
        ),
        (WorkloadObservation("failed"), {"status": "failed", "message": "boom"}, ("WorkloadFailed", "boom")),
        (WorkloadObservation("failed"), None, ("WorkloadFailed", "")),
    ],
)
def test_why_a_workload_failed(
    seen: WorkloadObservation, result: dict[str, Any] | None, why: tuple[str, str]
) -> None:
    assert failure_of(seen, result) == why


def test_a_trial_that_exits_without_a_result_fails_whatever_it_reported() -> None:
    spec = make_spec(tuning=small_tuning())
    trial = TrialStatus(name="trial-0000", number=0, state="Running")
    seen = WorkloadObservation("succeeded", epochs=(report(1, 0.8), report(2, 0.9)))
    ctx = Context(spec, PipelineStatus(trials=[trial]), Observations({"trial-0000": seen}), T0, None)
    absorb(ctx)
    assert (trial.state, trial.reason, trial.value, trial.values) == ("Failed", "NoResult", None, [0.8, 0.9])


def report(epoch: int, value: float | None) -> EpochReport:
    return EpochReport(epoch, {} if value is None else {"accuracy": value, "loss": 1.0})


@pytest.mark.parametrize(
    ("values", "reports", "expected"),
    [
        ([], [report(1, 0.5), report(2, 0.6)], [0.5, 0.6]),
        ([0.5], [report(3, 0.7)], [0.5, None, 0.7]),  # a gap stays a gap
        ([0.5, 0.6], [report(1, 0.55)], [0.55, 0.6]),  # a repeated epoch replaces its value
        ([0.5], [report(0, 0.9), report(2, None)], [0.5]),  # epoch 0 and reports without the metric
        ([], [report(1, 0.12345678)], [0.123457]),
    ],
)
def test_epoch_values(
    values: list[float | None], reports: list[EpochReport], expected: list[float | None]
) -> None:
    assert epoch_values(values, reports, "accuracy") == expected


@pytest.mark.parametrize(
    ("values", "result", "maximize", "expected"),
    [
        ([0.5, 0.7, 0.6], {"objective": {"value": 0.65}}, True, 0.65),  # the result's own objective
        ([0.5, 0.7, 0.6], None, True, 0.7),
        ([0.5, None, 0.3], {}, False, 0.3),
        ([0.5], {"objective": {"value": "bad"}}, True, 0.5),
        ([None], None, True, None),
        ([], {"objective": {"value": 1}}, True, 1.0),
    ],
)
def test_a_trials_objective(
    values: list[float | None], result: dict[str, Any] | None, maximize: bool, expected: float | None
) -> None:
    assert objective_of(values, result, maximize) == expected


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"metrics": {"accuracy": 0.9, "n": 3, "label": "x"}}, {"accuracy": 0.9, "n": 3.0}),
        ({"metrics": {"label": "x"}}, None),
        ({}, None),
        (None, None),
    ],
)
def test_numeric_metrics(result: dict[str, Any] | None, expected: dict[str, float] | None) -> None:
    assert numeric_metrics(result) == expected


@pytest.mark.parametrize(
    ("start", "end", "seconds"),
    [
        ("2026-11-23T06:00:00Z", "2026-11-23T06:01:30Z", 90.0),
        ("2026-11-23T06:01:30Z", "2026-11-23T06:00:00Z", 0.0),  # clocks disagree: never negative
        (None, "2026-11-23T06:00:00Z", None),
        ("2026-11-23T06:00:00Z", None, None),
    ],
)
def test_duration_seconds(start: str | None, end: str | None, seconds: float | None) -> None:
    assert duration_seconds(start, end) == seconds


def test_every_observed_state_has_a_handler() -> None:
    assert set(ON_STATE) == set(get_args(ObservedState))


@pytest.mark.parametrize(
    ("state", "attempt", "absorbed"),
    [("Running", 1, True), ("Pending", 1, True), ("Running", 0, False), ("Succeeded", 1, False)],
)
def test_only_the_current_attempt_of_an_active_record_is_absorbed(
    state: WorkloadState, attempt: int, absorbed: bool
) -> None:
    spec = make_spec(tuning=small_tuning())
    train = WorkloadStatus(name="train", stage="train", state=state, attempt=1)
    seen = WorkloadObservation(state="failed", attempt=attempt, reason="OOMKilled")
    ctx = Context(spec, PipelineStatus(workloads=[train]), Observations({"train": seen}), T0, None)
    absorb(ctx)
    assert (train.reason == "OOMKilled") == absorbed
    assert train.failures == (1 if absorbed else 0)


def test_a_trial_without_an_objective_fails_with_its_duration() -> None:
    spec = make_spec(tuning=small_tuning())
    trial = TrialStatus(name="trial-0000", number=0, state="Running", start_time="2026-11-23T06:00:00Z")
    finished = T0 + timedelta(seconds=42)
    seen = WorkloadObservation(state="succeeded", result={"status": "succeeded"}, finished_at=finished)
    ctx = Context(spec, PipelineStatus(trials=[trial]), Observations({"trial-0000": seen}), T0, None)
    absorb(ctx)
    assert (trial.state, trial.reason, trial.duration_seconds) == ("Failed", "NoObjective", 42.0)


@pytest.mark.parametrize(
    ("seen", "ready", "url"),
    [
        (ServingObservation(ready=True, model="ensemble", url="http://a"), True, "http://a"),
        (ServingObservation(ready=True, model=None), True, "http://old"),  # executors may not know the model
        (ServingObservation(ready=True, model="model", url="http://b"), False, "http://b"),  # the wrong model
        (ServingObservation(ready=False, model="ensemble"), False, "http://old"),
    ],
)
def test_serving_is_ready_only_for_the_model_status_asks_for(
    seen: ServingObservation, ready: bool, url: str
) -> None:
    serving = ServingStatus(model="ensemble", url="http://old")
    absorb_serving(serving, seen)
    assert (serving.ready, serving.url) == (ready, url)


def test_a_stuck_start_says_why_once_and_is_forgotten_once_running() -> None:
    spec = make_spec(tuning=small_tuning())
    train = WorkloadStatus(name="train", stage="train", state="Pending", attempt=1, reason="Restarted")
    stuck = WorkloadObservation("pending", attempt=1, reason="ImagePullBackOff", message="pull access denied")

    def step(seen: WorkloadObservation) -> list[str]:
        ctx = Context(spec, PipelineStatus(workloads=[train]), Observations({"train": seen}), T0, None)
        absorb(ctx)
        return [f"{a.type} {a.reason}: {a.message}" for a in ctx.decision().of(Emit)]

    assert step(stuck) == [
        "Warning NotStarting: train (attempt 1) is not starting: ImagePullBackOff: pull access denied"
    ]
    assert (train.state, train.reason, train.message) == (
        "Pending",
        "NotStarting",
        "ImagePullBackOff: pull access denied",
    )
    assert step(stuck) == []  # the same cause: said once
    assert step(WorkloadObservation("pending", attempt=1)) == []  # no cause reported: status keeps it
    assert train.reason == "NotStarting"
    assert step(WorkloadObservation("pending", attempt=1, reason="CreateContainerConfigError")) == [
        "Warning NotStarting: train (attempt 1) is not starting: CreateContainerConfigError"
    ]
    assert step(WorkloadObservation("running", attempt=1)) == []
    assert (train.state, train.reason, train.message) == ("Running", None, None)


USER_LOOP = {"epochs": 30, "batchSize": 64, "entrypoint": "mypkg.loop:train", "maxSteps": 900}


@pytest.mark.parametrize(("training", "steps"), [(USER_LOOP, [50, 100, None, 200]), (None, None)])
def test_a_user_loops_reports_keep_their_steps(training: dict[str, Any] | None, steps: Any) -> None:
    """A user loop's step per report, next to its value (a gap stays a gap); Conveyor's loop counts
    epochs and keeps none."""
    spec = make_spec(tuning=small_tuning(), **({"training": training} if training else {}))
    trial = TrialStatus(name="trial-0000", number=0, state="Running", values=[0.5], steps=[50])
    reports = (
        EpochReport(2, {"accuracy": 0.6}, 9, step=100),
        EpochReport(4, {"accuracy": 0.7}, 9, step=200),
    )
    seen = WorkloadObservation("running", epochs=reports)
    ctx = Context(spec, PipelineStatus(trials=[trial]), Observations({"trial-0000": seen}), T0, None)
    absorb(ctx)
    assert trial.values == [0.5, 0.6, None, 0.7]
    assert trial.steps == (steps if training else [50])


def test_a_user_loop_that_never_reported_the_objective_fails_with_that_reason() -> None:
    spec = make_spec(tuning=small_tuning(), training=USER_LOOP)
    trial = TrialStatus(name="trial-0000", number=0, state="Running")
    message = "the loop never reported accuracy: call conveyor.sdk.report(step, {'accuracy': ...})"
    result = {"status": "failed", "reason": reasons.OBJECTIVE_NOT_REPORTED, "message": message}
    seen = WorkloadObservation("succeeded", result=result)
    ctx = Context(spec, PipelineStatus(trials=[trial]), Observations({"trial-0000": seen}), T0, None)
    absorb(ctx)
    assert (trial.state, trial.reason, trial.message) == ("Failed", "ObjectiveNotReported", message)


def test_an_error_in_user_code_keeps_the_end_of_its_traceback() -> None:
    """Within a condition's message, too: here it fails the pipeline (maxFailedTrials 0)."""
    spec = make_spec(tuning=small_tuning(maxFailedTrials=0), training=USER_LOOP)
    status, _, _ = simulate(spec, steps=3, until=("Tuning",))
    traceback = "Traceback (most recent call last):\n" + "  frame\n" * 1000 + "ValueError: bad shape (3, 4)"
    result = {"status": "failed", "reason": reasons.USER_CODE_ERROR, "message": traceback}
    seen = WorkloadObservation("failed", result=result, reason="ExitCode", message="code 1")
    decision = reconcile(spec, status, Observations({"trial-0000": seen}), T0)
    trial = decision.status.trial("trial-0000")
    assert trial is not None and (trial.state, trial.reason) == ("Failed", "UserCodeError")
    assert trial.message is not None and trial.message.endswith("ValueError: bad shape (3, 4)")
    assert len(trial.message) == MESSAGE_LIMIT
    failed = decision.status.condition("Failed")
    assert failed is not None and failed.reason == "TrialFailedLimitExceeded"
    assert failed.message.endswith("ValueError: bad shape (3, 4)")

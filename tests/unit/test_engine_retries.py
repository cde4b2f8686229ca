"""Retrying non-trial workloads: up to backoffLimit, never for a permanent failure, and the pipeline
failing with the workload's own reason when no retry is left."""

from __future__ import annotations

from typing import get_args

import pytest

from conveyor.operator.api.status import WorkloadStatus
from conveyor.operator.engine import reasons
from conveyor.operator.engine.retries import ON_FAILURE, FailureAction, failure_action, failure_message
from conveyor.operator.workloads import PERMANENT_REASONS
from tests.helpers.specs import make_spec, small_tuning
from tests.unit.simulation import FakeExecutor, simulate


@pytest.mark.parametrize(("failures", "phase"), [(1, "Serving"), (2, "Serving"), (3, "Failed")])
def test_workload_retries_up_to_backoff_limit(failures: int, phase: str) -> None:
    spec = make_spec(tuning=small_tuning(), backoffLimit=2)
    executor = FakeExecutor(spec, fail={f"train-{n}" for n in range(failures)})
    status, executor, _ = simulate(spec, executor)
    assert status.phase == phase
    train = status.workload("train")
    assert train is not None and train.failures == failures
    assert [k for k in executor.started if k.startswith("train-")] == [
        f"train-{n}" for n in range(min(3, failures + 1))
    ]
    if phase == "Failed":
        assert status.reason == "TrainingFailed"


@pytest.mark.parametrize("reason", ["InvalidInput", "InvalidConfig", "DataError"])
def test_invalid_input_is_not_retried(reason: str) -> None:
    spec = make_spec(tuning=small_tuning(), backoffLimit=2)
    executor = FakeExecutor(spec, fail={"prepare-0"}, fail_reason=reason)
    status, executor, _ = simulate(spec, executor)
    assert status.phase == "Failed" and status.reason == "PrepareFailed"
    assert executor.started == ["prepare-0"]
    assert status.message is not None and reason in status.message and "no column 'label'" in status.message


def failed(failures: int, reason: str) -> WorkloadStatus:
    return WorkloadStatus(
        name="train", stage="train", state="Failed", failures=failures, reason=reason, message="it broke"
    )


@pytest.mark.parametrize(
    ("failures", "limit", "reason", "action"),
    [
        (1, 2, "OOMKilled", "Retry"),
        (2, 2, "OOMKilled", "Retry"),
        (3, 2, "OOMKilled", "FailPipeline"),
        (1, 0, "OOMKilled", "FailPipeline"),
        (1, 2, "InvalidInput", "FailPipeline"),
        (1, 2, "DataError", "FailPipeline"),
    ],
)
def test_failure_action(failures: int, limit: int, reason: str, action: str) -> None:
    assert failure_action(failed(failures, reason), limit) == action


@pytest.mark.parametrize(
    ("failures", "reason", "message"),
    [
        (3, "OOMKilled", "train failed 3 time(s) (backoffLimit 2); last: OOMKilled: it broke"),
        (1, "InvalidConfig", "train failed: InvalidConfig: it broke"),
    ],
)
def test_failure_message(failures: int, reason: str, message: str) -> None:
    assert failure_message(failed(failures, reason), 2) == message


def test_every_failure_action_has_a_handler() -> None:
    assert set(ON_FAILURE) == set(get_args(FailureAction))


def test_a_user_loop_that_never_reported_the_objective_is_not_retried() -> None:
    spec = make_spec(tuning=small_tuning(), backoffLimit=2)
    executor = FakeExecutor(spec, fail={"train-0"}, fail_reason=reasons.OBJECTIVE_NOT_REPORTED)
    status, executor, _ = simulate(spec, executor)
    assert reasons.OBJECTIVE_NOT_REPORTED in PERMANENT_REASONS
    assert status.phase == "Failed" and status.reason == "TrainingFailed"
    assert [k for k in executor.started if k.startswith("train-")] == ["train-0"]
    assert status.message == "train failed: ObjectiveNotReported: no column 'label'"


def test_an_error_in_user_code_is_retried_within_the_backoff_limit_with_its_message() -> None:
    spec = make_spec(tuning=small_tuning(), backoffLimit=1)
    executor = FakeExecutor(spec, fail={"train-0", "train-1"}, fail_reason=reasons.USER_CODE_ERROR)
    status, executor, _ = simulate(spec, executor)
    assert reasons.USER_CODE_ERROR not in PERMANENT_REASONS
    assert [k for k in executor.started if k.startswith("train-")] == ["train-0", "train-1"]
    assert status.phase == "Failed" and status.reason == "TrainingFailed"
    expected = "train failed 2 time(s) (backoffLimit 1); last: UserCodeError: no column 'label'"
    assert status.message == expected
    assert status.stages.train is not None and status.stages.train.message == expected
    train = status.workload("train")
    assert train is not None and (train.reason, train.message) == ("UserCodeError", "no column 'label'")

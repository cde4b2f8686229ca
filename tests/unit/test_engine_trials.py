"""The tuning stage: parallelism, failed trials against maxFailedTrials, grid search, ranking,
counting, the kept sampler state, and a status that stays compact for 500 trials."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conveyor.operator.api.status import PipelineStatus, TrialState, TrialStatus, TuningStatus
from conveyor.operator.engine import StartWorkload, StopWorkload, reconcile
from conveyor.operator.engine.trials import (
    MAX_SAMPLER_STATES,
    count,
    keep_sampler_state,
    ranked,
    sampler_state,
)
from tests.helpers.specs import make_spec, small_tuning
from tests.unit.simulation import T0, FakeExecutor, simulate


@pytest.mark.parametrize("parallelism", [1, 2, 3, 6])
def test_parallelism_is_respected_and_used(parallelism: int) -> None:
    spec = make_spec(tuning=small_tuning(parallelism=parallelism))
    status, _, decisions = simulate(spec)
    peak = 0
    for decision in decisions:
        active = sum(t.state in ("Pending", "Running") for t in decision.status.trials)
        assert active <= parallelism
        peak = max(peak, active)
    assert peak == parallelism
    assert len(status.trials) == 6


def test_failed_trials_under_the_limit_still_count_as_trials() -> None:
    spec = make_spec(tuning=small_tuning(maxFailedTrials=2))
    executor = FakeExecutor(spec, fail={"trial-0001-0", "trial-0003-0"})
    status, executor, _ = simulate(spec, executor)
    assert status.phase == "Serving"
    assert [t.state for t in status.trials].count("Failed") == 2 and len(status.trials) == 6
    assert status.tuning is not None and status.tuning.failed == 2
    assert status.ensemble is not None and not {"trial-0001", "trial-0003"} & set(status.ensemble.members)


def test_failed_trial_limit_fails_the_pipeline_and_stops_trials() -> None:
    spec = make_spec(tuning=small_tuning(maxFailedTrials=1, parallelism=3))
    executor = FakeExecutor(spec, fail={"trial-0000-0", "trial-0001-0"})
    status, executor, decisions = simulate(spec, executor)
    assert status.phase == "Failed" and status.reason == "TrialFailedLimitExceeded"
    assert "maxFailedTrials 1" in (status.message or "")
    assert status.stages.tune is not None and status.stages.tune.state == "Failed"
    last = decisions[-1]
    stopped = {a.name for a in last.actions if isinstance(a, StopWorkload)}
    assert stopped == {"trial-0002"}
    assert "train" not in executor.runs
    assert status.condition("Failed").reason == "TrialFailedLimitExceeded"  # type: ignore[union-attr]


def test_grid_search_resumes_without_repeating_a_point() -> None:
    parameters = [
        {"name": "optimizer.learningRate", "type": "categorical", "values": [0.001, 0.003, 0.01]},
        {"name": "training.batchSize", "type": "categorical", "values": [32, 64]},
    ]
    spec = make_spec(tuning=small_tuning(algorithm="grid", parameters=parameters, trials=10, parallelism=4))
    status, executor, _ = simulate(spec, repeat_every=1)
    points = [tuple(sorted(t.params.items())) for t in status.trials]
    assert len(points) == 6 == len(set(points))  # the grid caps the study at its size
    assert executor.duplicates.count("trial-0000-0") <= 1
    assert status.tuning is not None and status.tuning.trials == 6


def test_status_stays_compact_for_500_trials() -> None:
    """500 finished trials of 30 epochs each, three parameters: well under etcd's 1.5 MiB, and one
    reconcile over them (study rebuilt, best trial, ensemble choice) decides correctly. How long that
    reconcile takes is measured in benchmarks/engine_reconcile.py, not here."""
    spec = make_spec(tuning=small_tuning(trials=500, parallelism=10, pruner="asha"))
    status, executor, _ = simulate(spec, steps=3, until=("Tuning",))
    template = status.trials[0]
    trials = []
    for n in range(500):
        trial = template.model_copy(deep=True)
        trial.name, trial.number, trial.state = f"trial-{n:04d}", n, "Succeeded" if n < 499 else "Running"
        trial.values = [round(0.5 + 0.015 * e + 0.0001 * n, 6) for e in range(30)]
        trial.value = max(trial.values)
        trial.params = {
            "optimizer.learningRate": 0.001 + n * 1e-5,
            "training.batchSize": 64,
            "model.dropout": 0.1 + n * 1e-4,
        }
        trial.attrs = {
            "completed_rung_0": 0.5,
            "completed_rung_1": 0.6,
            "completed_rung_2": 0.7,
            "conveyor:checked": 30,
        }
        trial.start_time = trial.completion_time = "2026-11-23T06:00:00Z"
        trial.duration_seconds = 42.0
        trials.append(trial)
    status.trials = trials
    size = len(json.dumps(status.to_wire()))
    assert size < 600_000, size  # etcd's limit is 1.5 MiB
    decision = reconcile(spec, status, executor.observations(), T0)
    assert decision.status.best_trial is not None and decision.status.best_trial.name == "trial-0498"
    # Every planned trial exists: nothing more is asked, and the counts cover all 500.
    assert not decision.of(StartWorkload)
    counted = decision.status.tuning
    assert counted is not None and (counted.created, counted.succeeded) == (500, 499)


def trial(number: int, state: TrialState = "Succeeded", value: float | None = 0.5) -> TrialStatus:
    return TrialStatus(name=f"trial-{number:04d}", number=number, state=state, value=value)


@pytest.mark.parametrize(
    ("trials", "maximize", "order"),
    [
        ([trial(0, value=0.5), trial(1, value=0.9), trial(2, value=0.7)], True, [1, 2, 0]),
        ([trial(0, value=0.5), trial(1, value=0.9), trial(2, value=0.7)], False, [0, 2, 1]),
        ([trial(0, value=0.7), trial(1, value=0.9), trial(2, value=0.9)], True, [1, 2, 0]),  # ties: earlier
        ([trial(0, "Pruned", 0.99), trial(1, "Failed", 0.99), trial(2, value=0.1)], True, [2]),
        ([trial(0, value=None), trial(1, "Running")], True, []),
    ],
)
def test_ranked(trials: list[TrialStatus], maximize: bool, order: list[int]) -> None:
    assert [t.number for t in ranked(trials, maximize)] == order


def test_count() -> None:
    states: list[TrialState] = [
        "Pending",
        "Running",
        "Succeeded",
        "Succeeded",
        "Failed",
        "Pruned",
        "Suspended",
    ]
    tuning = TuningStatus(trials=10)
    count(tuning, [trial(n, state) for n, state in enumerate(states)])
    assert (tuning.trials, tuning.created, tuning.running) == (10, 7, 2)
    assert (tuning.succeeded, tuning.failed, tuning.pruned) == (2, 1, 1)


@pytest.mark.parametrize(
    ("states", "finished", "expected"),
    [
        ({"1": {"a": 1}, "3": {"a": 3}}, [1, 3], {"trial": 3, "attrs": {"a": 3}}),
        ({"1": {"a": 1}, "3": {"a": 3}}, [1], {"trial": 1, "attrs": {"a": 1}}),  # trial 3 not done yet
        ({"10": {"a": 10}, "9": {"a": 9}}, [9, 10], {"trial": 10, "attrs": {"a": 10}}),  # numbers, not text
        ({"1": {"a": 1}}, [], None),
        (None, [1], None),
    ],
)
def test_sampler_state_resumes_from_the_newest_succeeded_trial(
    states: dict[str, Any] | None, finished: list[int], expected: dict[str, Any] | None
) -> None:
    status = PipelineStatus(
        trials=[trial(n, "Succeeded" if n in finished else "Running") for n in range(12)],
        tuning=TuningStatus(sampler_state=states),
    )
    assert sampler_state(status) == expected


def test_only_the_newest_sampler_states_are_kept() -> None:
    status = PipelineStatus(tuning=TuningStatus())
    for number in (0, 1, 2, 9, 10):
        keep_sampler_state(status, number, {"n": number})
    assert status.tuning is not None and status.tuning.sampler_state is not None
    assert sorted(status.tuning.sampler_state, key=int) == ["2", "9", "10"][-MAX_SAMPLER_STATES:]

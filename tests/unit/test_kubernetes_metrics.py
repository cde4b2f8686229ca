"""The operator's Prometheus gauges follow each pipeline's latest status, also when reconciles record
from many threads at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import get_args

from conveyor.operator.api.status import (
    Phase,
    PipelineStatus,
    StagesStatus,
    StageStatus,
    TrialState,
    TrialStatus,
)
from conveyor.operator.kubernetes.metrics import Metrics


def status(phase: str, *trial_states: str) -> PipelineStatus:
    trials = [TrialStatus(name=f"trial-{i:04d}", number=i, state=s) for i, s in enumerate(trial_states)]
    return PipelineStatus.model_validate({"phase": phase, "trials": [t.model_dump() for t in trials]})


def gauge(metrics: Metrics, name: str, label: str, value: str) -> float | None:
    return metrics.registry.get_sample_value(name, {label: value})


def test_every_phase_and_trial_state_is_a_series_from_the_start() -> None:
    metrics = Metrics()
    for phase in get_args(Phase):
        assert gauge(metrics, "conveyor_pipelines", "phase", phase) == 0, phase
    for state in get_args(TrialState):
        assert gauge(metrics, "conveyor_trials", "state", state) == 0, state


def test_gauges_move_with_each_pipelines_status() -> None:
    metrics = Metrics()
    assert gauge(metrics, "conveyor_pipelines", "phase", "Tuning") == 0
    a, b = ("ns", "a"), ("ns", "b")
    metrics.record(a, None, status("Tuning", "Running", "Running"))
    metrics.record(b, None, status("Tuning", "Succeeded", "Pruned", "Running"))
    assert gauge(metrics, "conveyor_pipelines", "phase", "Tuning") == 2
    assert gauge(metrics, "conveyor_trials", "state", "Running") == 3

    metrics.record(a, status("Tuning"), status("Training", "Succeeded", "Succeeded"))
    assert gauge(metrics, "conveyor_pipelines", "phase", "Tuning") == 1
    assert gauge(metrics, "conveyor_pipelines", "phase", "Training") == 1
    assert gauge(metrics, "conveyor_trials", "state", "Running") == 1
    assert gauge(metrics, "conveyor_trials", "state", "Succeeded") == 3

    metrics.record(b, None, None)  # deleted
    assert gauge(metrics, "conveyor_pipelines", "phase", "Tuning") == 0
    assert gauge(metrics, "conveyor_trials", "state", "Running") == 0
    assert gauge(metrics, "conveyor_trials", "state", "Pruned") == 0


def test_a_finished_stage_is_observed_once() -> None:
    metrics = Metrics()
    running = status("Preparing")
    running.stages = StagesStatus(prepare=StageStatus(state="Running", start_time="2026-11-23T10:00:00Z"))
    done = running.model_copy(deep=True)
    done.stages.prepare = StageStatus(
        state="Succeeded", start_time="2026-11-23T10:00:00Z", completion_time="2026-11-23T10:00:12Z"
    )
    metrics.record(("ns", "a"), None, running)
    metrics.record(("ns", "a"), running, done)
    metrics.record(("ns", "a"), done, done)
    labels = {"stage": "prepare"}
    assert metrics.registry.get_sample_value("conveyor_stage_duration_seconds_count", labels) == 1
    assert metrics.registry.get_sample_value("conveyor_stage_duration_seconds_sum", labels) == 12


def test_concurrent_records_keep_the_gauges_consistent() -> None:
    metrics = Metrics()
    keys = [("ns", f"p{i}") for i in range(200)]

    def churn(key: tuple[str, str]) -> None:
        for phase in ("Preparing", "Tuning", "Training", "Serving"):
            metrics.record(key, None, status(phase, "Running", "Succeeded"))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(churn, keys))
    assert gauge(metrics, "conveyor_pipelines", "phase", "Serving") == len(keys)
    assert gauge(metrics, "conveyor_pipelines", "phase", "Tuning") == 0
    assert gauge(metrics, "conveyor_trials", "state", "Running") == len(keys)

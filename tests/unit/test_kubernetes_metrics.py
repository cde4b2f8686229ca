"""The operator's Prometheus gauges follow each pipeline's latest status, also when reconciles record
from many threads at once; training throughput follows the pods' epoch events."""

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
from conveyor.operator.kubernetes.builders import label_value
from conveyor.operator.kubernetes.metrics import Metrics
from conveyor.operator.kubernetes.statusserver import ProgressStore


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


def rate(metrics: Metrics, workload: str, pipeline: str = "a") -> float | None:
    labels = {"namespace": "ns", "pipeline": pipeline, "workload": workload}
    return metrics.registry.get_sample_value("conveyor_training_samples_per_second", labels)


def test_throughput_follows_the_epoch_events_of_active_workloads_only() -> None:
    """Pods' epoch events reach the gauge through the progress store (as the operator wires them); a
    workload's series goes when its trial is no longer active, and never comes back for a late event."""
    metrics = Metrics()
    store = ProgressStore(measure=metrics.epoch)

    def epoch(workload: str, number: int, samples: float | None) -> None:
        event: dict[str, object] = {"event": "epoch", "epoch": number, "metrics": {}}
        if samples is not None:
            event["samplesPerSecond"] = samples
        store.add(("ns", "a", workload, 0), event)

    epoch("trial-0000", 1, 900.0)  # before any status: not a workload the operator runs
    assert rate(metrics, "trial-0000") is None
    metrics.record(("ns", "a"), None, status("Tuning", "Running", "Running"))
    epoch("trial-0000", 1, 900.0)
    epoch("trial-0000", 2, 1100.5)
    epoch("trial-0001", 1, 800.0)
    epoch("trial-0001", 2, None)  # an event without throughput keeps the last value
    assert rate(metrics, "trial-0000") == 1100.5
    assert rate(metrics, "trial-0001") == 800.0
    assert metrics.registry.get_sample_value("conveyor_training_epochs_total") == 5

    metrics.record(("ns", "a"), None, status("Tuning", "Pruned", "Running"))
    assert rate(metrics, "trial-0000") is None
    assert rate(metrics, "trial-0001") == 800.0
    epoch("trial-0000", 3, 1000.0)  # late: the trial was pruned
    assert rate(metrics, "trial-0000") is None

    metrics.record(("ns", "a"), None, None)  # the pipeline was deleted
    assert rate(metrics, "trial-0001") is None
    epoch("trial-0001", 3, 700.0)
    assert rate(metrics, "trial-0001") is None


def test_throughput_series_use_the_pods_pipeline_label() -> None:
    """Pods carry the pipeline's label value, which is shortened for names over 63 characters."""
    metrics = Metrics()
    name = "x" * 80
    metrics.record(("ns", name), None, status("Tuning", "Running"))
    metrics.epoch("ns", label_value(name), "trial-0000", 500.0)
    assert rate(metrics, "trial-0000", label_value(name)) == 500.0
    metrics.record(("ns", name), None, None)
    assert rate(metrics, "trial-0000", label_value(name)) is None

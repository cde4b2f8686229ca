"""Prometheus metrics of the operator (anchors §6 #6: users ask for controller metrics, not only GPU
dashboards). One registry per operator, passed in, so tests and several operators in one process do
not collide. Gauges are recomputed from the statuses the operator last wrote, so they are right after a
restart without any state of their own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from conveyor.operator.api.status import PipelineStatus, parse_time

PHASES = (
    "Pending", "Preparing", "Tuning", "Training", "Evaluating", "Ensembling", "Serving", "Succeeded",
    "Failed", "Suspended",
)
TRIAL_STATES = ("Pending", "Running", "Succeeded", "Failed", "Pruned", "Suspended")


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.pipelines = Gauge("conveyor_pipelines", "Pipelines by phase.", ["phase"], registry=r)
        self.trials = Gauge("conveyor_trials", "Trials of all pipelines by state.", ["state"], registry=r)
        self.reconciles = Counter(
            "conveyor_reconciles_total", "Reconciles by result.", ["result"], registry=r
        )
        self.latency = Histogram(
            "conveyor_reconcile_seconds", "Reconcile latency (observe, decide, apply, write status).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.stage_seconds = Histogram(
            "conveyor_stage_duration_seconds", "Duration of finished stages.", ["stage"],
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600), registry=r,
        )
        self.api_errors = Counter(
            "conveyor_api_errors_total", "Kubernetes API errors by verb.", ["verb"], registry=r
        )
        self.statuses: dict[tuple[str, str], PipelineStatus] = {}

    def record(self, key: tuple[str, str], old: PipelineStatus | None, new: PipelineStatus | None) -> None:
        """Recompute the gauges with `key`'s new status; observe stages that just finished."""
        if new is None:
            self.statuses.pop(key, None)
        else:
            self.statuses[key] = new
            for stage in ("prepare", "tune", "train", "evaluate", "ensemble", "serve"):
                now_stage = getattr(new.stages, stage)
                before = getattr(old.stages, stage) if old is not None else None
                done = now_stage is not None and now_stage.state in ("Succeeded", "Failed")
                was_done = before is not None and before.state in ("Succeeded", "Failed")
                if done and not was_done and now_stage.start_time and now_stage.completion_time:
                    began, ended = parse_time(now_stage.start_time), parse_time(now_stage.completion_time)
                    if began and ended:
                        self.stage_seconds.labels(stage).observe((ended - began).total_seconds())
        self._gauges(self.statuses)

    def _gauges(self, statuses: Mapping[tuple[str, str], PipelineStatus]) -> None:
        phases = dict.fromkeys(PHASES, 0)
        trials = dict.fromkeys(TRIAL_STATES, 0)
        for status in statuses.values():
            phases[status.phase] = phases.get(status.phase, 0) + 1
            for trial in status.trials:
                trials[trial.state] = trials.get(trial.state, 0) + 1
        for phase, count in phases.items():
            self.pipelines.labels(phase).set(count)
        for state, count in trials.items():
            self.trials.labels(state).set(count)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)

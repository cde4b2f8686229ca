"""Prometheus metrics of the operator (anchors §6 #6: users ask for controller metrics, not only GPU
dashboards). One registry per operator, passed in, so tests and several operators in one process do
not collide. Gauges count the statuses the operator last decided (each pipeline's share is swapped on
every reconcile, under a lock: reconciles run in several threads), so they are right after a restart
without any state of their own.

Training throughput comes from the epoch events pods push to the progress endpoint (`samplesPerSecond`:
all ranks of the job together). It is one series per ACTIVE workload (the last status's
`active_workloads`): a finished, pruned or deleted workload's series is removed, so a dashboard's sum
is what trains now, and a late event of a finished workload cannot bring its series back."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import TypeGuard, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from conveyor.operator.api.status import (
    STAGES,
    Phase,
    PipelineStatus,
    StageStatus,
    TrialState,
    parse_time,
)
from conveyor.operator.engine import active_workloads
from conveyor.operator.kubernetes.builders import label_value

# Every value of the gauges' labels, set to 0 up front so a dashboard sees each series from the start.
PIPELINE_PHASES: tuple[str, ...] = get_args(Phase)
TRIAL_STATES: tuple[str, ...] = get_args(TrialState)


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
        self.leader = Gauge(
            "conveyor_operator_leader", "1 while this replica reconciles (holds the Lease), else 0.",
            registry=r,
        )
        self.throughput = Gauge(
            "conveyor_training_samples_per_second",
            "Samples per second of each active training workload's latest epoch, all ranks together.",
            ["namespace", "pipeline", "workload"], registry=r,
        )
        self.epochs = Counter(
            "conveyor_training_epochs_total", "Epoch events received from training pods.", registry=r
        )
        for phase in PIPELINE_PHASES:
            self.pipelines.labels(phase).set(0)
        for state in TRIAL_STATES:
            self.trials.labels(state).set(0)
        self._shares: dict[tuple[str, str], tuple[str, Tally[str]]] = {}
        # Per (namespace, pipeline label value): the workloads active in its last status, and those
        # with a throughput series.
        self._active: dict[tuple[str, str], set[str]] = {}
        self._rates: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()

    def record(self, key: tuple[str, str], old: PipelineStatus | None, new: PipelineStatus | None) -> None:
        """Swap `key`'s share of the gauges for its new status; observe stages that just finished."""
        share: tuple[str, Tally[str]] | None = None
        if new is not None:
            share = (new.phase, Tally(trial.state for trial in new.trials))
        with self._lock:
            previous = self._shares.pop(key, None)
            if previous is not None:
                self.pipelines.labels(previous[0]).dec()
                for state, count in previous[1].items():
                    self.trials.labels(state).dec(count)
            if share is not None:
                self._shares[key] = share
                self.pipelines.labels(share[0]).inc()
                for state, count in share[1].items():
                    self.trials.labels(state).inc(count)
            self._keep_active_rates(key, new)
        if new is not None:
            for stage in STAGES:
                now_stage = new.stages.get(stage)
                before = old.stages.get(stage) if old is not None else None
                if not _finished(now_stage) or _finished(before):
                    continue
                began, ended = parse_time(now_stage.start_time), parse_time(now_stage.completion_time)
                if began and ended:
                    self.stage_seconds.labels(stage).observe((ended - began).total_seconds())

    def epoch(self, namespace: str, pipeline: str, workload: str, samples_per_second: float | None) -> None:
        """An epoch event of `workload` (`pipeline` is the pods' label value) arrived."""
        self.epochs.inc()
        if samples_per_second is None:
            return
        with self._lock:
            if workload not in self._active.get((namespace, pipeline), ()):
                return
            self._rates.setdefault((namespace, pipeline), set()).add(workload)
            self.throughput.labels(namespace, pipeline, workload).set(samples_per_second)

    def _keep_active_rates(self, key: tuple[str, str], new: PipelineStatus | None) -> None:
        """Remember `key`'s active workloads and drop the throughput of the others (lock held)."""
        pipeline = (key[0], label_value(key[1]))
        active = {name for name, _ in active_workloads(new)}
        if active:
            self._active[pipeline] = active
        else:
            self._active.pop(pipeline, None)
        rates = self._rates.get(pipeline, set())
        for workload in rates - active:
            self.throughput.remove(*pipeline, workload)
        rates &= active
        if not rates:
            self._rates.pop(pipeline, None)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)


def _finished(stage: StageStatus | None) -> TypeGuard[StageStatus]:
    return stage is not None and stage.state in ("Succeeded", "Failed")

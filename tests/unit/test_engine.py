"""The pipeline engine, end to end against a fake executor: stage order, the gate, parallelism,
failures and retries, suspension, deadlines, TTL, idempotency and resuming from status alone."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from simulation import T0, FakeExecutor, roundtrip, simulate

from conftest import REPO, reference_document
from conveyor.operator.api.resource import parse
from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.engine import (
    DeletePipeline,
    Emit,
    Observations,
    ServingObservation,
    StartServing,
    StartWorkload,
    StopServing,
    StopWorkload,
    WorkloadObservation,
    active_workloads,
    reconcile,
)


def make_spec(**changes: Any) -> TrainingPipelineSpec:
    """The reference spec with top-level spec fields replaced (None removes a section)."""
    document = copy.deepcopy(reference_document())
    for key, value in changes.items():
        if value is None:
            document["spec"].pop(key, None)
        else:
            document["spec"][key] = value
    return parse(document).spec


def small_tuning(**changes: Any) -> dict[str, Any]:
    tuning = copy.deepcopy(reference_document()["spec"]["tuning"])
    tuning.update({"trials": 6, "parallelism": 2, "pruner": "none"})
    tuning.update(changes)
    return tuning


def first_starts(decisions: list[Any]) -> list[str]:
    names: list[str] = []
    for decision in decisions:
        for action in decision.actions:
            if isinstance(action, StartWorkload) and action.workload.name not in names:
                names.append(action.workload.name)
            if isinstance(action, StartServing) and "serve" not in names:
                names.append("serve")
    return names


def started_at(decisions: list[Any]) -> dict[str, int]:
    """The reconcile at which each workload (and serving) was first started."""
    steps: dict[str, int] = {}
    for index, decision in enumerate(decisions):
        for action in decision.actions:
            if isinstance(action, StartWorkload):
                steps.setdefault(action.workload.name, index)
            if isinstance(action, StartServing):
                steps.setdefault("serve", index)
    return steps


def test_stage_order_with_everything() -> None:
    spec = make_spec(tuning=small_tuning())
    status, executor, decisions = simulate(spec)
    order = first_starts(decisions)
    trials = [f"trial-{n:04d}" for n in range(6)]
    assert order[:7] == ["prepare", *trials]
    assert order[-1] == "serve"
    # The final training and the ensemble start together once tuning is done; each is then evaluated.
    step = started_at(decisions)
    assert step["train"] == step["ensemble"] > max(step[t] for t in trials)
    assert step["evaluate-model"] > step["train"] and step["evaluate-ensemble"] > step["ensemble"]
    assert step["serve"] > max(step["evaluate-model"], step["evaluate-ensemble"])
    assert status.phase == "Serving" and status.serving is not None and status.serving.model == "ensemble"
    assert status.condition("Ready").status == "True"  # type: ignore[union-attr]
    assert status.condition("Succeeded").status == "True"  # type: ignore[union-attr]
    assert executor.duplicates == []


def test_final_training_uses_the_best_trial() -> None:
    spec = make_spec(tuning=small_tuning())
    status, executor, _ = simulate(spec)
    assert status.best_trial is not None
    best = max((t for t in status.trials if t.state == "Succeeded"), key=lambda t: t.value or 0)
    assert status.best_trial.name == best.name
    train = executor.runs["train"].workload
    assert dict(train.params) == best.params
    assert train.config is not None
    assert train.config["optimizer"]["learningRate"] == best.params["optimizer.learningRate"]


def test_ensemble_members_are_the_top_k_trials() -> None:
    spec = make_spec(tuning=small_tuning())
    status, executor, _ = simulate(spec)
    ranked = sorted((t for t in status.trials if t.state == "Succeeded"), key=lambda t: -(t.value or 0))
    assert status.ensemble is not None
    assert status.ensemble.members == [t.name for t in ranked[:3]]
    assert executor.runs["ensemble"].workload.models == tuple(f"trials/{t.name}" for t in ranked[:3])


def test_without_tuning_trains_the_spec_as_written() -> None:
    spec = make_spec(tuning=None, ensemble=None, serving=None)
    status, executor, decisions = simulate(spec)
    assert first_starts(decisions) == ["prepare", "train", "evaluate-model"]
    assert status.phase == "Succeeded" and status.trials == []
    assert executor.runs["train"].workload.params == {}
    assert status.stages.tune is not None and status.stages.tune.state == "Skipped"
    assert status.condition("Ready").status == "True"  # type: ignore[union-attr]
    assert status.condition("Tuned") is None


def test_phases_follow_the_stages() -> None:
    spec = make_spec(tuning=small_tuning())
    _, _, decisions = simulate(spec)
    phases: list[str] = []
    for decision in decisions:
        if not phases or phases[-1] != decision.status.phase:
            phases.append(decision.status.phase)
    # The ensemble runs beside the final training, so the phase (the earliest stage still at work) may
    # skip Ensembling; it never goes back.
    order = ["Preparing", "Tuning", "Training", "Evaluating", "Ensembling", "Serving"]
    assert phases[:3] == order[:3] and phases[-1] == "Serving"
    assert [order.index(p) for p in phases] == sorted(order.index(p) for p in phases)


@pytest.mark.parametrize(
    ("test_metric", "serving", "phase", "served"),
    [
        (0.99, True, "Serving", True),
        (0.90, True, "Failed", False),
        (0.99, False, "Succeeded", False),
        (0.90, False, "Failed", False),
    ],
)
def test_gate_decides_serving(test_metric: float, serving: bool, phase: str, served: bool) -> None:
    spec = make_spec(
        tuning=small_tuning(), serving=reference_document()["spec"]["serving"] if serving else None
    )
    status, _, decisions = simulate(spec, FakeExecutor(spec, test_metric=test_metric))
    assert status.phase == phase
    assert any(isinstance(a, StartServing) for d in decisions for a in d.actions) == served
    assert status.gate is not None and status.gate.candidate == "ensemble"
    assert status.gate.passed == (test_metric >= 0.95)
    gate = status.condition("GatePassed")
    assert gate is not None and gate.status == ("True" if test_metric >= 0.95 else "False")
    if test_metric < 0.95:
        assert status.reason == "GateFailed" and "0.9000" in (status.message or "")
        assert status.condition("Failed").status == "True"  # type: ignore[union-attr]
        if serving:
            assert status.condition("Serving").status == "False"  # type: ignore[union-attr]
            assert status.condition("Serving").reason == "GateFailed"  # type: ignore[union-attr]


def test_gate_judges_the_model_without_an_ensemble() -> None:
    spec = make_spec(tuning=small_tuning(), ensemble=None)
    status, _, decisions = simulate(spec)
    assert status.gate is not None and status.gate.candidate == "model"
    serve = [a for d in decisions for a in d.actions if isinstance(a, StartServing)]
    assert serve and serve[0].model == "model"


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


@pytest.mark.parametrize("reason", ["InvalidInput", "InvalidConfig", "DataError"])
def test_invalid_input_is_not_retried(reason: str) -> None:
    spec = make_spec(tuning=small_tuning(), backoffLimit=2)
    executor = FakeExecutor(spec, fail={"prepare-0"}, fail_reason=reason)
    status, executor, _ = simulate(spec, executor)
    assert status.phase == "Failed" and status.reason == "PrepareFailed"
    assert executor.started == ["prepare-0"]
    assert status.message is not None and reason in status.message and "no column 'label'" in status.message


def test_same_inputs_decide_nothing_new() -> None:
    spec = make_spec(tuning=small_tuning())
    executor = FakeExecutor(spec)
    status: PipelineStatus | None = None
    now = T0
    for _ in range(30):
        seen = executor.observations()
        decision = reconcile(spec, status, seen, now)
        again = reconcile(spec, roundtrip(decision.status), seen, now)
        assert not [a for a in again.actions if isinstance(a, StartWorkload | StopWorkload | StartServing)]
        assert roundtrip(again.status) == roundtrip(decision.status)
        executor.apply(decision)
        status = roundtrip(decision.status)
        executor.tick()
        now += timedelta(seconds=10)


@pytest.mark.parametrize("algorithm", ["tpe", "random", "cmaes"])
@pytest.mark.parametrize("pruner", ["none", "asha", "median", "hyperband"])
def test_resume_from_status_alone_repeats_and_loses_nothing(algorithm: str, pruner: str) -> None:
    """Every step round-trips status through JSON (the engine keeps no memory); lost status writes
    are replayed at every step. Same trials, same parameters, no duplicates, exactly `trials`."""
    if algorithm == "cmaes":
        pytest.importorskip("cmaes")
    spec = make_spec(tuning=small_tuning(algorithm=algorithm, pruner=pruner, trials=8, parallelism=3))
    clean, clean_executor, _ = simulate(spec)
    replayed, replayed_executor, _ = simulate(spec, repeat_every=1)
    assert len(clean.trials) == 8 == len(replayed.trials)
    assert [t.params for t in clean.trials] == [t.params for t in replayed.trials]
    assert [t.state for t in clean.trials] == [t.state for t in replayed.trials]
    assert clean_executor.duplicates == []
    started = [k for k in replayed_executor.started if k.startswith("trial-")]
    assert sorted(started) == [f"trial-{n:04d}-0" for n in range(8)]


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


def test_conditions_keep_transition_times_unless_they_change() -> None:
    spec = make_spec(tuning=small_tuning())
    _, _, decisions = simulate(spec)
    first = {c.type: c.last_transition_time for c in decisions[0].status.conditions}
    prepared = decisions[-1].status.condition("Prepared")
    failed = decisions[-1].status.condition("Failed")
    assert prepared is not None and failed is not None
    assert failed.last_transition_time == first["Failed"]  # never changed status
    assert prepared.last_transition_time != first["Prepared"]  # Unknown/False -> True
    assert all(c.observed_generation == 1 for c in decisions[-1].status.conditions)
    assert decisions[-1].status.observed_generation == 1


def test_progress_strings_for_the_printer_column() -> None:
    spec = make_spec(tuning=small_tuning())
    _, _, decisions = simulate(spec)
    progress = [d.status.progress for d in decisions]
    assert "trials 0/6" in progress and "trials 6/6" not in progress
    assert any(p and p.startswith("trials ") for p in progress)
    assert any(p and p.startswith("epoch ") for p in progress)
    assert progress[-1] == "serving"
    assert decisions[-1].status.best_objective is not None
    assert decisions[-1].status.best_objective.startswith("accuracy=")


def test_serving_restarts_when_the_executor_lost_it() -> None:
    spec = make_spec(tuning=small_tuning())
    status, executor, _ = simulate(spec)
    decision = reconcile(
        spec, status, Observations(executor.observations().workloads, ServingObservation(ready=False)), T0
    )
    assert [a.model for a in decision.actions if isinstance(a, StartServing)] == ["ensemble"]
    steady = reconcile(spec, status, executor.observations(), T0)
    assert not steady.of(StartServing)


def test_status_stays_compact_for_500_trials() -> None:
    """500 finished trials of 30 epochs each, three parameters: well under etcd's 1.5 MiB, and one
    reconcile over them (study rebuilt, best trial, ensemble choice) stays quick."""
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
    started = time.perf_counter()
    decision = reconcile(spec, status, executor.observations(), T0)
    assert time.perf_counter() - started < 5
    assert decision.status.best_trial is not None and decision.status.best_trial.name == "trial-0498"


def test_engine_imports_no_io_libraries() -> None:
    code = (
        "import sys, conveyor.operator.engine, conveyor.operator.api.resource, conveyor.operator.workloads\n"
        "bad = [m for m in ('kopf', 'kubernetes', 'torch', 'aiohttp') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


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

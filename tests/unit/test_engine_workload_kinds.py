"""The table of workload kinds: each kind's workload rebuilt from spec and status alone, and what a
succeeded workload records in status."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.operator.api.status import (
    ArtifactsStatus,
    BestTrial,
    EnsembleStatus,
    PipelineStatus,
    TrialStatus,
    WorkloadStatus,
)
from conveyor.operator.engine import reasons, workload_kinds
from conveyor.operator.engine.workload_kinds import (
    KINDS,
    metrics_message,
    record_result,
    trial_name,
    workload_for,
)
from tests.helpers.specs import make_spec, small_tuning
from tests.unit.simulation import simulate

PARAMS = {"optimizer.learningRate": 0.003, "training.batchSize": 32, "model.dropout": 0.1}


def tuned_status() -> PipelineStatus:
    """A status after tuning: two trials, the best one known, the ensemble's members chosen."""
    trials = [
        TrialStatus(name=trial_name(n), number=n, params={**PARAMS, "model.dropout": 0.1 * n})
        for n in range(2)
    ]
    return PipelineStatus(
        trials=trials,
        best_trial=BestTrial(name="trial-0001", number=1, value=0.97, params=trials[1].params),
        ensemble=EnsembleStatus(members=["trial-0001", "trial-0000"], method="hardVoting"),
        artifacts=ArtifactsStatus(root="pvc://x", data="data"),
    )


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


@pytest.mark.parametrize(
    ("name", "stage", "command", "out", "distributed", "models"),
    [
        ("prepare", "prepare", "prepare", "data", False, ()),
        ("trial-0001", "tune", "train", "trials/trial-0001", True, ()),
        ("train", "train", "train", "model", True, ()),
        ("evaluate-model", "evaluate", "evaluate", "evaluation/model", False, ("model",)),
        ("ensemble", "ensemble", "ensemble", "ensemble", False, ("trials/trial-0001", "trials/trial-0000")),
        ("evaluate-ensemble", "ensemble", "evaluate", "evaluation/ensemble", False, ("ensemble",)),
    ],
)
def test_every_kind_builds_its_workload(
    name: str, stage: str, command: str, out: str, distributed: bool, models: tuple[str, ...]
) -> None:
    spec = make_spec(tuning=small_tuning())
    workload = workload_for(spec, tuned_status(), name, 3)
    assert (workload.name, workload.stage, workload.command, workload.out) == (name, stage, command, out)
    assert workload.attempt == 3 and workload.distributed == distributed and workload.models == models
    assert workload.workers == (spec.resources.workers if distributed else 1)
    assert workload.env == tuple((e.name, e.value) for e in spec.env or ())


def test_trials_and_the_final_training_carry_their_parameters() -> None:
    spec = make_spec(tuning=small_tuning())
    status = tuned_status()
    trial = workload_for(spec, status, "trial-0000", 0)
    assert trial.trial == 0 and dict(trial.params) == status.trials[0].params
    train = workload_for(spec, status, "train", 0)
    assert dict(train.params) == status.trials[1].params
    assert workload_for(spec, status, "ensemble", 0).method == spec.ensemble.method  # type: ignore[union-attr]
    untuned = make_spec(tuning=None, ensemble=None)
    assert dict(workload_for(untuned, status, "train", 0).params) == {}


def test_a_trial_under_asha_waits_for_verdicts_at_its_rungs_and_nothing_else_does() -> None:
    status = tuned_status()
    asha = make_spec(training={"epochs": 27, "batchSize": 32}, tuning=small_tuning(pruner="asha"))
    assert workload_for(asha, status, "trial-0000", 0).verdict_epochs == (1, 3, 9)
    assert workload_for(asha, status, "train", 0).verdict_epochs == ()
    unpruned = make_spec(training={"epochs": 27, "batchSize": 32}, tuning=small_tuning(pruner="none"))
    assert workload_for(unpruned, status, "trial-0000", 0).verdict_epochs == ()


@pytest.mark.parametrize(("name", "error"), [("nope", "unknown workload"), ("trial-0009", "no trial")])
def test_unknown_workloads_are_refused(name: str, error: str) -> None:
    with pytest.raises(KeyError, match=error):
        workload_for(make_spec(tuning=small_tuning()), tuned_status(), name, 0)


@pytest.mark.parametrize(("number", "name"), [(0, "trial-0000"), (7, "trial-0007"), (1234, "trial-1234")])
def test_trial_names(number: int, name: str) -> None:
    assert trial_name(number) == name


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"accuracy": 0.97123, "loss": 0.1}, "test accuracy 0.9712"),
        ({"loss": 0.1}, "evaluated"),
        (None, "evaluated"),
    ],
)
def test_metrics_message(metrics: dict[str, float] | None, message: str) -> None:
    assert metrics_message("accuracy", metrics) == message


@pytest.mark.parametrize(
    ("name", "artifacts", "evaluation", "message"),
    [
        ("prepare", {}, {}, "dataset prepared"),
        ("train", {"model": "model"}, {}, "final model trained"),
        (
            "evaluate-model",
            {"model_report": "evaluation/model"},
            {"model": {"accuracy": 0.96}},
            "test accuracy 0.9600",
        ),
        ("ensemble", {"ensemble": "ensemble"}, {}, None),
        (
            "evaluate-ensemble",
            {"ensemble_report": "evaluation/ensemble"},
            {"ensemble": {"accuracy": 0.96}},
            "test accuracy 0.9600",
        ),
    ],
)
def test_recording_a_result(
    name: str, artifacts: dict[str, str], evaluation: dict[str, Any], message: str | None
) -> None:
    spec = make_spec(tuning=small_tuning())
    status = tuned_status()
    before = status.artifacts.model_dump()  # type: ignore[union-attr]
    rec = WorkloadStatus(name=name, stage=KINDS[name].stage, state="Succeeded", metrics={"accuracy": 0.96})
    assert record_result(spec, status, rec) == message
    assert status.artifacts is not None and status.artifacts.model_dump() == {**before, **artifacts}
    recorded = status.evaluation.model_dump(exclude_none=True) if status.evaluation else {}
    assert recorded == evaluation


@pytest.mark.parametrize(("tuned", "best_objective"), [(False, "accuracy=0.9600"), (True, None)])
def test_the_final_training_is_the_best_objective_only_without_tuning(
    tuned: bool, best_objective: str | None
) -> None:
    spec = make_spec(tuning=small_tuning()) if tuned else make_spec(tuning=None, ensemble=None)
    status = tuned_status()
    record_result(spec, status, WorkloadStatus(name="train", stage="train", metrics={"accuracy": 0.96}))
    assert status.best_objective == best_objective


def test_every_row_names_a_known_artifact_and_reason() -> None:
    failures = {v for k, v in vars(reasons).items() if k.isupper()}
    for kind in KINDS.values():
        assert kind.artifact is None or kind.artifact in ArtifactsStatus.model_fields
        assert kind.failure in failures
    assert len({kind.failure for kind in KINDS.values()}) == len(KINDS)
    assert not any(name.startswith(workload_kinds.TRIAL_PREFIX) for name in KINDS)

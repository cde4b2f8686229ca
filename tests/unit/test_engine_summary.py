"""The summary: phases that follow the stages, conditions that keep their transition times, and the
progress strings of the printer column."""

from __future__ import annotations

import pytest

from conveyor.operator.api.status import (
    STAGES,
    Phase,
    PipelineStatus,
    ServingStatus,
    TrialState,
    TrialStatus,
    TuningStatus,
    WorkloadStatus,
)
from conveyor.operator.engine.summary import STAGE_PHASES, progress
from tests.helpers.specs import make_spec, small_tuning
from tests.unit.simulation import simulate


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


def test_every_stage_has_a_phase() -> None:
    assert set(STAGE_PHASES) == set(STAGES)


def tuning_status(phase: Phase, states: list[TrialState]) -> PipelineStatus:
    trials = [TrialStatus(name=f"trial-{n:04d}", number=n, state=s) for n, s in enumerate(states)]
    return PipelineStatus(phase=phase, trials=trials, tuning=TuningStatus(trials=6))


def training_status(epoch: int | None, epochs: int | None) -> PipelineStatus:
    train = WorkloadStatus(name="train", stage="train", epoch=epoch, epochs=epochs)
    return PipelineStatus(phase="Training", workloads=[train])


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (tuning_status("Tuning", ["Succeeded", "Pruned", "Failed", "Running"]), "trials 3/6"),
        (tuning_status("Suspended", ["Succeeded", "Suspended"]), "trials 1/6 (suspended)"),
        (tuning_status("Tuning", []), "tuning"),  # no trials yet
        (training_status(3, 30), "epoch 3/30"),
        (training_status(None, 30), "training"),
        (PipelineStatus(phase="Training"), "training"),
        (PipelineStatus(phase="Pending"), "pending"),
        (PipelineStatus(phase="Preparing"), "preparing data"),
        (PipelineStatus(phase="Evaluating"), "evaluating"),
        (PipelineStatus(phase="Ensembling"), "ensembling"),
        (PipelineStatus(phase="Serving", serving=ServingStatus(ready=True)), "serving"),
        (PipelineStatus(phase="Serving", serving=ServingStatus(ready=False)), "starting server"),
        (PipelineStatus(phase="Serving"), "starting server"),
        (PipelineStatus(phase="Succeeded"), "done"),
        (PipelineStatus(phase="Failed", reason="GateFailed"), "GateFailed"),
        (PipelineStatus(phase="Failed"), "failed"),
        (PipelineStatus(phase="Suspended"), "suspended"),
    ],
)
def test_progress(status: PipelineStatus, text: str) -> None:
    assert progress(status) == text

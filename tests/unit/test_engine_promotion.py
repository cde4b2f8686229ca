"""Promotion: the ensemble's members, the gate deciding what is served, and serving started again
when the executor lost it."""

from __future__ import annotations

import pytest

from conveyor.operator.api.status import GateStatus
from conveyor.operator.engine import Observations, ServingObservation, StartServing, reconcile
from conveyor.operator.engine.promotion import SERVED_ARTIFACT, candidate, gate_message
from tests.helpers.manifests import reference_document
from tests.helpers.specs import make_spec, small_tuning
from tests.unit.simulation import T0, FakeExecutor, simulate


def test_ensemble_members_are_the_top_k_trials() -> None:
    spec = make_spec(tuning=small_tuning())
    status, executor, _ = simulate(spec)
    ranked = sorted((t for t in status.trials if t.state == "Succeeded"), key=lambda t: -(t.value or 0))
    assert status.ensemble is not None
    assert status.ensemble.members == [t.name for t in ranked[:3]]
    assert executor.runs["ensemble"].workload.models == tuple(f"trials/{t.name}" for t in ranked[:3])


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


def test_serving_restarts_when_the_executor_lost_it() -> None:
    spec = make_spec(tuning=small_tuning())
    status, executor, _ = simulate(spec)
    decision = reconcile(
        spec, status, Observations(executor.observations().workloads, ServingObservation(ready=False)), T0
    )
    assert [a.model for a in decision.actions if isinstance(a, StartServing)] == ["ensemble"]
    steady = reconcile(spec, status, executor.observations(), T0)
    assert not steady.of(StartServing)


@pytest.mark.parametrize(
    ("ensemble", "judged", "served"), [(True, "ensemble", "ensemble"), (False, "model", "model")]
)
def test_the_candidate_is_what_would_be_served(ensemble: bool, judged: str, served: str) -> None:
    spec = make_spec(tuning=small_tuning()) if ensemble else make_spec(tuning=small_tuning(), ensemble=None)
    assert candidate(spec) == judged
    assert SERVED_ARTIFACT[candidate(spec)] == served


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        (
            GateStatus(metric="accuracy", min=0.95, value=0.97, candidate="ensemble", passed=True),
            "ensemble test accuracy 0.9700 passes the gate (accuracy >= 0.95)",
        ),
        (
            GateStatus(metric="loss", max=0.2, value=0.31, candidate="model", passed=False),
            "model test loss 0.3100 fails the gate (loss <= 0.2)",
        ),
        (
            GateStatus(metric="f1", min=0.5, max=0.9, value=0.7, candidate="model", passed=True),
            "model test f1 0.7000 passes the gate (f1 >= 0.5 and <= 0.9)",
        ),
        (
            GateStatus(metric="f1", min=0.5, value=None, candidate="ensemble", passed=False),
            "ensemble test f1 was not computed, so it fails the gate (f1 >= 0.5)",
        ),
    ],
)
def test_gate_message(gate: GateStatus, message: str) -> None:
    assert gate_message(gate) == message

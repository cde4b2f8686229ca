"""The pipeline end to end through `reconcile` against a fake executor: stage order, idempotency,
resuming from status alone, and an engine free of I/O libraries."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest

from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.engine import StartServing, StartWorkload, StopWorkload, reconcile
from tests.helpers.manifests import REPO
from tests.helpers.specs import make_spec, small_tuning
from tests.unit.simulation import T0, FakeExecutor, roundtrip, simulate


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


def test_without_tuning_trains_the_spec_as_written() -> None:
    spec = make_spec(tuning=None, ensemble=None, serving=None)
    status, executor, decisions = simulate(spec)
    assert first_starts(decisions) == ["prepare", "train", "evaluate-model"]
    assert status.phase == "Succeeded" and status.trials == []
    assert executor.runs["train"].workload.params == {}
    assert status.stages.tune is not None and status.stages.tune.state == "Skipped"
    assert status.condition("Ready").status == "True"  # type: ignore[union-attr]
    assert status.condition("Tuned") is None


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


def test_engine_imports_no_io_libraries() -> None:
    code = (
        "import sys, conveyor.operator.engine, conveyor.operator.api.resource, conveyor.operator.workloads\n"
        "bad = [m for m in ('kopf', 'kubernetes', 'torch', 'aiohttp') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)

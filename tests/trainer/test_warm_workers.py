"""Warm workers train exactly as torchrun does: the same trial (2 workers on gloo, digits, a CNN),
started by the local executor cold (torchrun agents, fresh interpreters) and warm (forks of the fork
server), reaches the very same result; a trial without its dataset fails the same way on both paths
(a DataError result; warm, each process exits 2 itself, where torchrun's agents exit 1)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conveyor.operator.engine.observations import WorkloadObservation
from conveyor.operator.executors.local import LocalExecutor
from conveyor.operator.workloads import Workload
from conveyor.trainer.artifacts import workload_dir
from tests.trainer.training_helpers import config, prepared

pytestmark = pytest.mark.slow


def finished(executor: LocalExecutor, workload: Workload) -> WorkloadObservation:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        seen = executor.observe([(workload.name, 0)], serving=False).workloads[workload.name]
        if seen.state != "running":
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{workload.name} never finished")


def run_trial(
    root: Path, warm: bool, training: dict[str, object], prepare: bool = True
) -> tuple[WorkloadObservation, list[int | None]]:
    cfg = config(data={"source": "builtin://digits"}, model={"architecture": "cnn"}, training=training)
    if prepare:
        prepared(root, data={"source": "builtin://digits"})
    name = "trial-0000"
    workload = Workload(
        name, "tune", "train", workload_dir(name), config=cfg.to_wire(), distributed=True, workers=2
    )
    executor = LocalExecutor(root, warm=warm)
    try:
        executor.start(workload)
        return finished(executor, workload), executor.jobs[name].exit_codes()
    finally:
        executor.shutdown()


def test_a_warm_trial_reaches_the_same_result_as_a_cold_one(tmp_path: Path) -> None:
    training = {"epochs": 3, "earlyStopping": None}
    (cold, _), (warm, codes) = (run_trial(tmp_path / m, m == "warm", training) for m in ("cold", "warm"))
    assert cold.state == warm.state == "succeeded" and codes == [0, 0]
    assert cold.result is not None and warm.result is not None
    assert warm.result["metrics"] == cold.result["metrics"]
    assert [e.metrics for e in warm.epochs] == [e.metrics for e in cold.epochs]


def test_a_trial_without_its_dataset_fails_alike_warm_and_cold(tmp_path: Path) -> None:
    training = {"epochs": 3}
    (cold, _), (warm, codes) = (
        run_trial(tmp_path / m, m == "warm", training, prepare=False) for m in ("cold", "warm")
    )
    assert cold.state == warm.state == "failed"
    assert cold.result is not None and warm.result is not None
    assert cold.result["reason"] == warm.result["reason"] == "DataError"
    assert {code for code in codes if code is not None} == {2}  # the first to exit fails the trial

"""The local executor's bookkeeping with real (tiny) processes: the facts it reports for workloads it
runs and for workloads a previous run left behind, and that stopping takes the whole process tree down.
What the facts mean is the engine's (tests/unit/test_executor_protocol.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conveyor.operator.engine.actions import StartWorkload, StopWorkload
from conveyor.operator.engine.observations import WorkloadObservation
from conveyor.operator.executors.local import LocalExecutor
from conveyor.operator.executors.protocol import carry_out
from conveyor.operator.workloads import Workload
from tests.helpers.processes import alive, fake_python, leftovers


def trial(attempt: int = 0, workers: int = 2) -> Workload:
    return Workload(
        "trial-0001", "tune", "train", "trials/trial-0001", attempt=attempt, distributed=True, workers=workers
    )


def write_result(root: Path, workload: Workload, **fields: object) -> None:
    out = root / workload.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"event": "result", **fields}))


def observe(executor: LocalExecutor, workload: Workload) -> WorkloadObservation:
    return executor.observe([(workload.name, workload.attempt)], serving=False).workloads[workload.name]


def wait_until_done(executor: LocalExecutor, workload: Workload) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = observe(executor, workload).state
        if state not in ("running", "pending"):
            return state
        time.sleep(0.05)
    raise AssertionError("workload never finished")


def test_one_process_per_worker_and_success_needs_every_worker(tmp_path: Path) -> None:
    root = tmp_path / "run"
    executor = LocalExecutor(root, python=fake_python(tmp_path, 'echo "$PET_NODE_RANK $WORLD_SIZE"'))
    workload = trial(workers=3)
    carry_out(executor, [StartWorkload(workload)])
    assert len(executor.jobs["trial-0001"].processes) == 3
    assert wait_until_done(executor, workload) == "succeeded"
    log = (root / "logs" / "trial-0001-0.log").read_text().split("\n")
    assert sorted(line for line in log if line) == ["0 3", "1 3", "2 3"]


def test_a_failing_worker_fails_the_workload_with_its_log(tmp_path: Path) -> None:
    body = 'if [ "$PET_NODE_RANK" = 1 ]; then echo "boom on rank 1"; exit 3; fi'
    executor = LocalExecutor(tmp_path / "run", python=fake_python(tmp_path, body))
    workload = trial()
    carry_out(executor, [StartWorkload(workload)])
    assert wait_until_done(executor, workload) == "failed"
    seen = observe(executor, workload)
    assert seen.reason == "ProcessFailed"
    assert seen.message is not None and "boom on rank 1" in seen.message and "3" in seen.message


def test_a_start_for_the_running_attempt_is_a_no_op(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "run", python=fake_python(tmp_path, "sleep 30"))
    workload = trial()
    carry_out(executor, [StartWorkload(workload)])
    first = [p.pid for p in executor.jobs["trial-0001"].processes]
    carry_out(executor, [StartWorkload(workload)])
    assert [p.pid for p in executor.jobs["trial-0001"].processes] == first
    executor.shutdown()


def test_stop_takes_down_the_process_tree(tmp_path: Path) -> None:
    # The worker forks a grandchild (as torchrun does); stopping must reach it too.
    body = f"sleep 60 & echo $! > {tmp_path}/grandchild.$PET_NODE_RANK; wait"
    executor = LocalExecutor(tmp_path / "run", python=fake_python(tmp_path, body))
    workload = trial()
    carry_out(executor, [StartWorkload(workload)])
    deadline = time.monotonic() + 10
    while len(list(tmp_path.glob("grandchild.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchildren = [int(p.read_text()) for p in tmp_path.glob("grandchild.*")]
    assert len(grandchildren) == 2
    carry_out(executor, [StopWorkload("trial-0001", 0, "Pruned")])
    assert leftovers(lambda: [pid for pid in grandchildren if alive(pid)], timeout=10) == []


def test_after_a_restart_a_finished_workload_reports_its_result_and_an_unfinished_one_is_lost(
    tmp_path: Path,
) -> None:
    root = tmp_path / "run"
    executor = LocalExecutor(root)  # a new process: it started nothing
    finished, unfinished = trial(), Workload("train", "train", "train", "model", distributed=True)
    write_result(
        root, finished, status="succeeded", attempt=0, objective={"metric": "accuracy", "value": 0.9}
    )
    # Both are lost (their processes are gone); the finished one's result survived: the engine's verdict.
    assert observe(executor, finished).state == "lost"
    assert observe(executor, finished).result is not None
    assert (observe(executor, unfinished).state, observe(executor, unfinished).result) == ("lost", None)
    # A result from an older attempt is not this attempt's.
    assert observe(executor, trial(attempt=1)).result is None


def test_starting_an_attempt_discards_an_older_attempts_result(tmp_path: Path) -> None:
    root = tmp_path / "run"
    executor = LocalExecutor(root, python=fake_python(tmp_path, "sleep 30"))
    write_result(root, trial(), status="failed", attempt=0, reason="Boom")
    carry_out(executor, [StartWorkload(trial(attempt=1))])
    assert not (root / "trials" / "trial-0001" / "result.json").exists()
    assert observe(executor, trial(attempt=1)).state == "running"
    executor.shutdown()


def test_serving_is_observed_only_when_asked_and_nothing_served_says_so(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "run")
    assert executor.observe([], serving=False).serving is None
    nothing = executor.observe([], serving=True).serving
    assert nothing is not None and (nothing.ready, nothing.model) == (False, None)

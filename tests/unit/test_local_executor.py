"""The local executor's bookkeeping with real (tiny) processes, started cold (fresh interpreters) and
warm (forked by the fork server): the facts it reports for workloads it runs and for workloads a
previous run left behind, that stopping takes the whole process tree down, that warm processes get the
environment torchrun would give them, and that nothing a fork server started outlives it. What the
facts mean is the engine's (tests/unit/test_executor_protocol.py)."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from conveyor.devcluster.pytest_plugin import wait_for
from conveyor.operator.engine.actions import RequestStop, StartWorkload, StopWorkload
from conveyor.operator.engine.observations import Observations, WorkloadObservation
from conveyor.operator.executors.forkserver import ForkServer
from conveyor.operator.executors.local import LocalExecutor, torchrun_process_env
from conveyor.operator.executors.protocol import carry_out
from conveyor.operator.workloads import TORCHRUN_PROCESS_ENV, Workload
from conveyor.sdk.env import STOP_FILE
from conveyor.trainer.progress import VERDICT_FILE
from tests.helpers.processes import alive, fake_python, leftovers, stand_in_executor

Make = Callable[[Path, str], LocalExecutor]


@pytest.fixture(scope="module")
def forkserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    server = ForkServer(sys.executable, tmp_path_factory.mktemp("forkserver"))
    yield server
    server.close()


@pytest.fixture(params=["cold", "warm"])
def make(
    request: pytest.FixtureRequest, forkserver: ForkServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Make:
    """An executor rooted at the given directory whose workloads run the given shell body."""

    def executor(root: Path, body: str) -> LocalExecutor:
        return stand_in_executor(request.param, root, fake_python(tmp_path, body), forkserver, monkeypatch)

    return executor


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


def observe_until(
    executor: LocalExecutor, workload: Workload, seen: Callable[[WorkloadObservation], bool], what: str
) -> WorkloadObservation:
    """The first observation of `workload` for which `seen` holds, within 20 s."""

    def check() -> WorkloadObservation | None:
        observation = observe(executor, workload)
        return observation if seen(observation) else None

    found: WorkloadObservation = wait_for(check, 20, what, interval=0.05)
    return found


def wait_until_done(executor: LocalExecutor, workload: Workload) -> str:
    finished = observe_until(
        executor, workload, lambda o: o.state not in ("running", "pending"), "the workload to finish"
    )
    return finished.state


def test_one_process_per_worker_and_success_needs_every_worker(tmp_path: Path, make: Make) -> None:
    root = tmp_path / "run"
    executor = make(root, 'echo "$PET_NODE_RANK $WORLD_SIZE"')
    workload = trial(workers=3)
    carry_out(executor, [StartWorkload(workload)])
    assert len(executor.jobs["trial-0001"].processes) == 3
    assert wait_until_done(executor, workload) == "succeeded"
    log = (root / "logs" / "trial-0001-0.log").read_text().split("\n")
    assert sorted(line for line in log if line) == ["0 3", "1 3", "2 3"]


def test_a_failing_worker_fails_the_workload_with_its_log(tmp_path: Path, make: Make) -> None:
    body = 'if [ "$PET_NODE_RANK" = 1 ]; then echo "boom on rank 1"; exit 3; fi'
    executor = make(tmp_path / "run", body)
    workload = trial()
    carry_out(executor, [StartWorkload(workload)])
    assert wait_until_done(executor, workload) == "failed"
    seen = observe(executor, workload)
    assert seen.reason == "ProcessFailed"
    assert seen.message is not None and "boom on rank 1" in seen.message and "3" in seen.message


def test_a_start_for_the_running_attempt_is_a_no_op(tmp_path: Path, make: Make) -> None:
    executor = make(tmp_path / "run", "sleep 30")
    workload = trial()
    carry_out(executor, [StartWorkload(workload)])
    first = [p.pid for p in executor.jobs["trial-0001"].processes]
    carry_out(executor, [StartWorkload(workload)])
    assert [p.pid for p in executor.jobs["trial-0001"].processes] == first
    executor.shutdown()


def test_stop_takes_down_the_process_tree(tmp_path: Path, make: Make) -> None:
    # The worker forks a grandchild (as torchrun does); stopping must reach it too.
    body = f"sleep 60 & echo $! > {tmp_path}/grandchild.$PET_NODE_RANK; wait"
    executor = make(tmp_path / "run", body)
    workload = trial()
    carry_out(executor, [StartWorkload(workload)])

    def both_written() -> list[int]:
        pids = [int(p.read_text()) for p in tmp_path.glob("grandchild.*")]
        return pids if len(pids) == 2 else []

    grandchildren: list[int] = wait_for(both_written, 10, "both workers' grandchildren", interval=0.05)
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


def test_starting_an_attempt_discards_an_older_attempts_result(tmp_path: Path, make: Make) -> None:
    root = tmp_path / "run"
    executor = make(root, "sleep 30")
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


def test_warm_processes_get_what_torchrun_would_set_for_each_of_them(
    tmp_path: Path, forkserver: ForkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = "$RANK $LOCAL_RANK $LOCAL_WORLD_SIZE $WORLD_SIZE $PET_NODE_RANK"
    line += " $TORCHELASTIC_RUN_ID $CONVEYOR_WORKLOAD"
    script = fake_python(tmp_path, f'echo "{line}" >> {tmp_path}/ranks')
    executor = stand_in_executor("warm", tmp_path / "run", script, forkserver, monkeypatch)
    workload = Workload(
        "trial-0001",
        "tune",
        "train",
        "trials/trial-0001",
        distributed=True,
        workers=2,
        processes_per_worker=2,
    )
    carry_out(executor, [StartWorkload(workload)])
    assert wait_until_done(executor, workload) == "succeeded"
    assert sorted((tmp_path / "ranks").read_text().splitlines()) == [
        "0 0 2 4 0 trial-0001-0 trial-0001",
        "1 1 2 4 0 trial-0001-0 trial-0001",
        "2 0 2 4 1 trial-0001-0 trial-0001",
        "3 1 2 4 1 trial-0001-0 trial-0001",
    ]


@pytest.mark.parametrize(("workers", "per_worker"), [(1, 1), (2, 1), (1, 3), (3, 2)])
def test_torchrun_process_env_numbers_ranks_as_torchrun_does(workers: int, per_worker: int) -> None:
    workload = Workload(
        "train", "train", "train", "model", distributed=True, workers=workers, processes_per_worker=per_worker
    )
    envs = [torchrun_process_env(workload, n, local) for n in range(workers) for local in range(per_worker)]
    assert [int(env["RANK"]) for env in envs] == list(range(workers * per_worker))
    for env in envs:
        assert set(TORCHRUN_PROCESS_ENV) <= set(env)
        assert int(env["LOCAL_RANK"]) < int(env["LOCAL_WORLD_SIZE"]) == per_worker
        assert env["TORCHELASTIC_USE_AGENT_STORE"] == "False"  # rank 0 hosts the store


def test_the_fork_server_forks_from_one_thread_and_takes_its_children_along(tmp_path: Path) -> None:
    server = ForkServer(sys.executable, tmp_path / "run")
    process = server.ensure_started()
    try:
        assert len(os.listdir(f"/proc/{process.pid}/task")) == 1  # no thread pool to inherit half-locked
        script = fake_python(tmp_path, f"sleep 60 & echo $! > {tmp_path}/grandchild; wait")
        env = {**os.environ, "CONVEYOR_TEST_TRAINER": script}
        child = server.spawn("tests.helpers.shell_trainer", [], env, tmp_path / "child.log")
        grandchild = wait_for(
            lambda: int((tmp_path / "grandchild").read_text()), 10, "the grandchild", interval=0.05
        )
        assert child.poll() is None and alive(grandchild)
        # Killed outright (as when `conveyor run` is): its child dies with it, and reports so.
        os.kill(process.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert leftovers(lambda: [pid for pid in (child.pid, grandchild) if alive(pid)], timeout=10) == []
    finally:
        server.close()


def wait_for_stop(out: Path) -> str:
    """Shell: wait (bounded) for the stop file in `out`, as conveyor.sdk.report does; exit 0 only if
    it came."""
    return (
        f'i=0; while [ ! -f "{out}/{STOP_FILE}" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; '
        f'[ -f "{out}/{STOP_FILE}" ] && echo "stopped $PET_NODE_RANK"'
    )


def test_a_stop_request_reaches_every_worker_through_the_stop_file(tmp_path: Path, make: Make) -> None:
    root = tmp_path / "run"
    workload = trial()
    out = root / workload.out
    executor = make(root, wait_for_stop(out))
    carry_out(executor, [StartWorkload(workload)])
    carry_out(executor, [RequestStop("trial-0001", 1, "Pruned")])  # another attempt: not this one
    carry_out(executor, [RequestStop("trial-0002", 0, "Pruned")])  # nothing of that name runs
    assert not (out / STOP_FILE).exists() and observe(executor, workload).state == "running"
    carry_out(executor, [RequestStop("trial-0001", 0, "Pruned")] * 2)  # asked on every reconcile
    assert wait_until_done(executor, workload) == "succeeded"
    log = (root / "logs" / "trial-0001-0.log").read_text().split("\n")
    assert sorted(line for line in log if line) == ["stopped 0", "stopped 1"]


def test_a_new_attempt_does_not_obey_a_stop_or_a_verdict_meant_for_an_older_one(
    tmp_path: Path, make: Make
) -> None:
    root = tmp_path / "run"
    out = root / trial().out
    out.mkdir(parents=True)
    (out / STOP_FILE).touch()
    (out / VERDICT_FILE).write_text('{"epoch": 9}')
    executor = make(root, "sleep 30")
    carry_out(executor, [StartWorkload(trial(attempt=1))])
    assert not (out / STOP_FILE).exists() and not (out / VERDICT_FILE).exists()
    executor.shutdown()


def report_epoch(out: Path, epoch: int) -> str:
    """Shell: append one epoch event to the progress file, as the trainer's rank 0 does."""
    event = f'{{"event":"epoch","epoch":{epoch},"metrics":{{"accuracy":0.5}}}}'
    return f"""mkdir -p "{out}"; echo '{event}' >> "{out}/progress.jsonl"; """


def reported(executor: LocalExecutor, workload: Workload) -> WorkloadObservation:
    return observe_until(executor, workload, lambda o: bool(o.epochs), "an epoch reported")


def test_a_trial_told_its_rungs_goes_on_once_the_epoch_it_reported_is_judged(
    tmp_path: Path, make: Make
) -> None:
    root = tmp_path / "run"
    workload = replace(trial(workers=1), verdict_epochs=(1, 3))
    out = root / workload.out
    verdict = out / VERDICT_FILE
    waits = f'i=0; while [ ! -f "{verdict}" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; '
    body = f'echo "rungs $CONVEYOR_VERDICT_EPOCHS"; {report_epoch(out, 1)}{waits}cat "{verdict}"'
    executor = make(root, body)
    carry_out(executor, [StartWorkload(workload)])
    seen = reported(executor, workload)
    assert not verdict.exists()  # observed, not yet decided on
    executor.deliver_verdicts(Observations(workloads={workload.name: seen}))
    assert wait_until_done(executor, workload) == "succeeded"
    log = (root / "logs" / "trial-0001-0.log").read_text()
    assert "rungs 1,3" in log and json.loads(log[log.index("{") :]) == {"epoch": 1}


def test_no_verdict_for_a_trial_without_rungs_nor_for_one_stopped(tmp_path: Path, make: Make) -> None:
    root = tmp_path / "run"
    for name, rungs, stop in (("trial-0001", (), False), ("trial-0002", (1, 3), True)):
        workload = Workload(name, "tune", "train", f"trials/{name}", verdict_epochs=rungs)
        out = root / workload.out
        executor = make(root, f"{report_epoch(out, 1)}sleep 30")
        carry_out(executor, [StartWorkload(workload)])
        seen = reported(executor, workload)
        if stop:
            carry_out(executor, [StopWorkload(name, 0, "Pruned")])
        executor.deliver_verdicts(Observations(workloads={name: seen}))
        assert not (out / VERDICT_FILE).exists()
        executor.shutdown()

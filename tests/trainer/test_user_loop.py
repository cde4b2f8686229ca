"""conveyor.trainer.user_loop: the L2 runner (`train` with training.entrypoint), the L3 `command` stage
and the result both compose from the user's reports.

The runner tests call `python -m conveyor.trainer` (in this process where one process is enough, as a
subprocess where the test must stop or kill it) with the environment the executors set; user code is
small modules written into tmp_path. The own-loop example resumes from its checkpoint after a kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.sdk import env
from conveyor.trainer import progress
from conveyor.trainer.__main__ import main
from conveyor.trainer.artifacts import CARD_FILE
from conveyor.trainer.user_loop import (
    GLOO_TEARDOWN_ABORT,
    finished_before_teardown_abort,
    result_from_reports,
    torchrun_argv,
    traceback_tail,
)
from tests.trainer.training_helpers import REPO, as_json, child_env, config, prepared

OWN_LOOP = REPO / "examples" / "own-loop" / "src"


@pytest.fixture(autouse=True)
def restore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner sets the SDK's variables in this process; put them back after each test."""
    for name in (env.CONFIG, env.OUT, env.DATA, env.CODE, "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared(tmp_path_factory.mktemp("cancer"), data={"source": "builtin://breast-cancer"})


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared(tmp_path_factory.mktemp("digits"), data={"source": "builtin://digits"})


def write_reports(out: Path, reports: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for number, (step, metrics) in enumerate(reports, start=1):
        progress.emit(out, {"event": "epoch", "epoch": number, "step": step, "metrics": metrics})


def test_the_result_is_the_best_report_in_the_goals_direction(tmp_path: Path) -> None:
    write_reports(
        tmp_path,
        [
            (10, {"accuracy": 0.7, "loss": 0.9}),
            (20, {"loss": 0.5}),
            (30, {"accuracy": 0.9, "loss": 0.4}),
            (40, {"accuracy": 0.8, "loss": 0.3}),
        ],
    )
    best = result_from_reports(tmp_path, "accuracy", "maximize", stopped_early=True, duration_seconds=1.23456)
    assert best == {
        "status": "succeeded",
        "objective": {"metric": "accuracy", "value": 0.9},
        "metrics": {"accuracy": 0.9, "loss": 0.4},
        "epochsRun": 4,
        "bestEpoch": 3,
        "bestStep": 30,
        "stoppedEarly": True,
        "durationSeconds": 1.235,
    }
    lowest = result_from_reports(tmp_path, "loss", "minimize")
    assert (lowest["objective"]["value"], lowest["bestStep"], lowest["stoppedEarly"]) == (0.3, 40, False)


def test_no_objective_reported_fails_naming_the_metric_and_the_call(tmp_path: Path) -> None:
    write_reports(tmp_path, [(1, {"loss": 0.5})])
    result = result_from_reports(tmp_path, "f1", "maximize")
    assert result["status"] == "failed" and result["reason"] == "ObjectiveNotReported"
    assert "'f1'" in result["message"] and "conveyor.sdk.report" in result["message"]
    assert result_from_reports(tmp_path / "none", "f1", "maximize")["reason"] == "ObjectiveNotReported"


def test_torchrun_argv_runs_the_program_with_this_interpreter() -> None:
    assert torchrun_argv(["python3", "train.py", "--lr", "0.1"], {}) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--no-python",
        sys.executable,
        "-m",
        "conveyor.trainer.python_program",
        "train.py",
        "--lr",
        "0.1",
    ]
    assert torchrun_argv(["python", "-u", "train.py"], {})[5:] == [sys.executable, "-u", "train.py"]
    executor_env = {"PET_MASTER_PORT": "29400", "PET_RDZV_ENDPOINT": "node0:29400"}
    assert torchrun_argv(["./run.sh"], executor_env)[3:] == ["--no-python", "./run.sh"]


def test_the_failure_message_is_the_users_traceback_not_torchruns_report() -> None:
    stderr = [
        "W1130 07:23:54.745000 16945 torch/distributed/run.py:810] Setting OMP_NUM_THREADS",
        "Traceback (most recent call last):",
        '  File "train.py", line 3, in <module>',
        "ValueError: learning rate must be positive",
        "W1130 07:23:54.745000 16945 torch/distributed/elastic/multiprocessing/api.py:1028] Sending",
        "E1130 07:23:54.900000 16 torch/distributed/elastic/multiprocessing/api.py:900] failed (exitcode: 1)",
        "Traceback (most recent call last):",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
    ]
    assert traceback_tail(stderr) == "\n".join(stderr[1:4])


def test_only_gloos_teardown_abort_after_the_model_was_saved_counts_as_finished(tmp_path: Path) -> None:
    report = [
        "E1130 07:23:54.900000 16 torch/distributed/elastic/multiprocessing/api.py:9] failed (exitcode: -6)",
        "Traceback (most recent call last):",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
    ]
    aborted = ["terminate called without an active exception", *report]
    crashed = ["Traceback (most recent call last):", "RuntimeError: boom", *aborted]
    assert not finished_before_teardown_abort(aborted, tmp_path)  # no model saved yet
    (tmp_path / CARD_FILE).write_text("{}")
    assert finished_before_teardown_abort(aborted, tmp_path)
    assert not finished_before_teardown_abort(crashed, tmp_path)
    assert not finished_before_teardown_abort(report, tmp_path)  # another signal, not the abort


@pytest.mark.parametrize(
    ("ending", "status"),
    [
        ("sys.stderr.write(ABORT + '\\n'); sys.stderr.flush(); os.abort()", 0),
        ("raise RuntimeError('boom')", 1),
    ],
)
def test_a_worker_node_ignores_only_gloos_teardown_abort(tmp_path: Path, ending: str, status: int) -> None:
    """A node other than rank 0's cannot see the model, and rank 0's node judges the run: there only
    the abort itself is forgiven, an error of the program's own is not."""
    program = f"import os, sys; ABORT = {GLOO_TEARDOWN_ABORT!r}; {ending}"
    command = [
        sys.executable,
        "-m",
        "conveyor.trainer",
        "command",
        "--config",
        as_json(config()),
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "model"),
        "--",
        "python",
        "-c",
        program,
    ]
    ran = subprocess.run(
        command, env=child_env(PET_NODE_RANK="1"), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == status, ran.stderr[-2000:]
    assert progress.read_result(tmp_path / "model") is None  # only rank 0's node writes the result


def user_module(tmp_path: Path, name: str, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setenv(env.CODE, str(code))


def train_stage(cfg: dict[str, Any], data: Path, out: Path) -> int:
    return main(
        ["train", "--config", json.dumps(config(**cfg).to_wire()), "--data", str(data), "--out", str(out)]
    )


def test_the_entrypoint_runs_with_the_config_and_its_reports_make_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancer: Path
) -> None:
    user_module(
        tmp_path,
        "loop_ok",
        """
        import os
        from conveyor import sdk

        def train(config):
            assert os.environ["CONVEYOR_OUT"] == str(sdk.info().out_dir)
            lr = config["optimizer"]["learningRate"]
            for step in range(1, 11):
                sdk.report(step, {"accuracy": 0.5 + lr * step, "trainLoss": 1.0 / step})
    """,
        monkeypatch,
    )
    out = tmp_path / "model"
    cfg = {"optimizer": {"learningRate": 0.01}, "training": {"entrypoint": "loop_ok:train", "maxSteps": 10}}
    assert train_stage(cfg, cancer, out) == 0
    result = progress.read_result(out)
    assert result is not None and result["status"] == "succeeded"
    assert result["objective"] == {"metric": "accuracy", "value": 0.6} and result["bestStep"] == 10
    assert result["epochsRun"] == 10 and result["stoppedEarly"] is False


def test_an_exception_in_the_entrypoint_fails_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancer: Path
) -> None:
    user_module(
        tmp_path,
        "loop_raises",
        """
        def train(config):
            raise RuntimeError("the loss went to NaN at step 7")
    """,
        monkeypatch,
    )
    out = tmp_path / "model"
    assert train_stage({"training": {"entrypoint": "loop_raises:train"}}, cancer, out) == 1
    result = progress.read_result(out)
    assert result is not None and (result["status"], result["reason"]) == ("failed", "UserCodeError")
    assert "loop_raises.py" in result["message"] and "the loss went to NaN at step 7" in result["message"]


def test_a_loop_that_never_reports_the_objective_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancer: Path
) -> None:
    user_module(
        tmp_path,
        "loop_silent",
        """
        from conveyor import sdk

        def train(config):
            sdk.report(1, {"loss": 0.3})
    """,
        monkeypatch,
    )
    out = tmp_path / "model"
    assert train_stage({"training": {"entrypoint": "loop_silent:train"}}, cancer, out) == 2
    result = progress.read_result(out)
    assert (
        result is not None
        and result["reason"] == "ObjectiveNotReported"
        and "'accuracy'" in result["message"]
    )


def test_a_wrong_entrypoint_is_a_config_error_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancer: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_module(tmp_path, "loop_typo", "def train(config):\n    pass\n", monkeypatch)
    out = tmp_path / "model"
    assert train_stage({"training": {"entrypoint": "loop_typo:trian"}}, cancer, out) == 2
    result = progress.read_result(out)
    assert result is not None and result["reason"] == "InvalidConfig"
    assert "training.entrypoint" in result["message"] and "loop_typo:train" in result["message"]
    assert "did you mean loop_typo:train" in capsys.readouterr().err
    assert train_stage({"training": {"command": ["python", "x.py"]}}, cancer, out) == 2
    result = progress.read_result(out)
    assert result is not None and "`command` stage" in result["message"]


def test_a_loop_asked_to_stop_leaves_and_the_result_says_so(tmp_path: Path, cancer: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "loop_until_told.py").write_text(
        textwrap.dedent("""
        import time
        from conveyor import sdk

        def train(config):
            for step in range(1, 100_000):
                time.sleep(0.005)  # a training step
                if not sdk.report(step, {"accuracy": min(step / 1000, 0.9)}):
                    return
            raise RuntimeError("never asked to stop")
    """)
    )
    out = tmp_path / "model"
    cfg = config(training={"entrypoint": "loop_until_told:train"})
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor.trainer",
            "train",
            "--config",
            as_json(cfg),
            "--data",
            str(cancer),
            "--out",
            str(out),
        ],
        env=child_env(PYTHONPATH=str(code)),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(progress.read_events(out)) < 3:
            assert run.poll() is None and time.monotonic() < deadline, "the loop did not report"
            time.sleep(0.02)
        (out / env.STOP_FILE).touch()  # what the local executor does when the tuner prunes the trial
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr[-2000:]
    result = progress.read_result(out)
    assert result is not None and result["status"] == "succeeded" and result["stoppedEarly"] is True


@pytest.mark.slow
def test_the_own_loop_example_resumes_from_its_checkpoint_on_a_retry(tmp_path: Path, digits: Path) -> None:
    """A retry of the workload is the same command with the same OUT: the loop loads its checkpoint."""
    import torch

    cfg = config(
        data={"source": "builtin://digits"},
        model={"entrypoint": "digits_loop.model:build", "options": {"hidden": 64}},
        training={"entrypoint": "digits_loop.loop:train", "maxSteps": 4000, "batchSize": 32},
    )
    out = tmp_path / "model"
    command = [
        sys.executable,
        "-m",
        "conveyor.trainer",
        "train",
        "--config",
        as_json(cfg),
        "--data",
        str(digits),
        "--out",
        str(out),
    ]
    environment = child_env(PYTHONPATH=str(OWN_LOOP), CONVEYOR_CODE=str(OWN_LOOP))
    first = subprocess.Popen(
        command, env=environment, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    checkpoint = out / "checkpoints" / "loop.pt"
    try:
        deadline = time.monotonic() + 180
        while not checkpoint.exists():
            assert first.poll() is None and time.monotonic() < deadline, "the loop ended before a checkpoint"
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)  # the node died
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
    assert progress.read_result(out) is None
    saved_step = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < saved_step < 4000
    before = progress.read_events(out)

    second = subprocess.run(command, env=environment, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    after = progress.read_events(out)[len(before) :]
    resumed = [e for e in after if e["event"] == "epoch"]
    assert resumed[0]["step"] == saved_step + 4000 // 20  # the next evaluation after the checkpoint
    assert [e["epoch"] for e in resumed] == list(range(len(before) + 1, len(before) + len(resumed) + 1))
    assert resumed[-1]["step"] == 4000
    result = progress.read_result(out)
    assert result is not None and result["status"] == "succeeded" and result["objective"]["value"] > 0.9
    assert result["epochsRun"] == len(before) + len(resumed)

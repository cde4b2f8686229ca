"""examples/argparse-script: an unmodified argparse script (training.command, L3) whose learning rate
arrives as `--lr {{params.optimizer.learningRate}}`, run by the `command` stage under torchrun."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.trainer import progress
from tests.examples.conveyor_run import report, run_example, trainer_config
from tests.examples.direct_run import predicted_accuracy, run_directly

NAME = "argparse-script"


def test_the_command_takes_the_learning_rate_from_the_trials_params() -> None:
    command = trainer_config(NAME).training.command
    assert command is not None and command[command.index("--lr") + 1] == "{{params.optimizer.learningRate}}"


@pytest.mark.slow
def test_the_script_trains_under_the_command_stage_and_its_model_serves(tmp_path: Path) -> None:
    data, out, result = run_directly(NAME, tmp_path, processes=2)
    assert result["status"] == "succeeded" and result["objective"]["value"] > 0.9
    assert [e["step"] for e in progress.read_events(out) if e["event"] == "epoch"] == list(range(1, 21))
    assert predicted_accuracy(NAME, data, out) > 0.9


@pytest.mark.slow
def test_conveyor_run_tunes_the_script_through_its_command_line(tmp_path: Path) -> None:
    status = run_example(NAME, tmp_path / "run")
    assert status["phase"] == "Succeeded"
    trials = status["trials"]
    assert len(trials) == 2 and len({t["params"]["optimizer.learningRate"] for t in trials}) == 2
    assert status["bestTrial"]["value"] > 0.9
    assert report(tmp_path / "run", "model")["metrics"]["accuracy"] > 0.9

"""examples/own-loop: the user's DDP loop (training.entrypoint, L2) over Conveyor's prepared digits,
reporting each evaluation and saving its model with conveyor.sdk."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.trainer import progress
from tests.examples.conveyor_run import report, run_example
from tests.examples.direct_run import code_dir, predicted_accuracy, run_directly

NAME = "own-loop"


@pytest.mark.slow
def test_the_loop_trains_under_torchrun_and_its_model_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, out, result = run_directly(NAME, tmp_path, processes=2)
    assert result["status"] == "succeeded" and result["objective"]["metric"] == "accuracy"
    assert result["objective"]["value"] > 0.9 and result["epochsRun"] == 20
    steps = [e["step"] for e in progress.read_events(out) if e["event"] == "epoch"]
    assert steps == list(range(20, 401, 20))  # every evaluation, on the maxSteps // 100 grid
    assert (out / "model.pt2").exists()
    monkeypatch.syspath_prepend(str(code_dir(NAME)))
    assert predicted_accuracy(NAME, data, out) > 0.9


@pytest.mark.slow
def test_conveyor_run_tunes_evaluates_and_ensembles_the_loop(tmp_path: Path) -> None:
    status = run_example(NAME, tmp_path / "run")
    assert status["phase"] == "Succeeded"
    assert status["bestTrial"]["value"] > 0.9
    assert report(tmp_path / "run", "model")["metrics"]["accuracy"] > 0.9
    assert report(tmp_path / "run", "ensemble")["objective"]["metric"] == "accuracy"

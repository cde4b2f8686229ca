"""examples/lightning: a Lightning script with conveyor.sdk.lightning.ConveyorCallback (L3, DDP)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.trainer import progress
from tests.examples.conveyor_run import report, run_example
from tests.examples.direct_run import predicted_accuracy, run_directly

NAME = "lightning"


@pytest.mark.slow
def test_the_callback_reports_each_validation_and_the_model_serves(tmp_path: Path) -> None:
    data, out, result = run_directly(NAME, tmp_path, processes=2)
    assert result["status"] == "succeeded" and result["objective"]["value"] > 0.9
    reports = [e for e in progress.read_events(out) if e["event"] == "epoch"]
    assert [e["step"] for e in reports] == list(range(30, 301, 30))  # val_check_interval = maxSteps // 10
    assert reports[-1]["metrics"]["accuracy"] == reports[-1]["metrics"]["val_accuracy"]  # the prefix dropped
    assert predicted_accuracy(NAME, data, out) > 0.9


@pytest.mark.slow
def test_conveyor_run_evaluates_the_lightning_model(tmp_path: Path) -> None:
    status = run_example(NAME, tmp_path / "run")
    assert status["phase"] == "Succeeded"
    assert report(tmp_path / "run", "model")["metrics"]["accuracy"] > 0.9

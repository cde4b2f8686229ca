"""examples/transformers: a Transformers Trainer on a config-initialised tiny BERT over generated text,
with conveyor.sdk.hf.ConveyorCallback (L3, DDP); nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.trainer import progress
from tests.examples.conveyor_run import report, run_example
from tests.examples.direct_run import code_dir, predicted_accuracy, run_directly

NAME = "transformers"


@pytest.mark.slow
def test_the_trainer_reports_each_evaluation_and_the_model_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data, out, result = run_directly(NAME, tmp_path, processes=2)
    assert result["status"] == "succeeded" and result["objective"]["value"] > 0.85
    reports = [e for e in progress.read_events(out) if e["event"] == "epoch"]
    assert [e["step"] for e in reports] == list(range(30, 301, 30))
    assert reports[-1]["metrics"]["accuracy"] == reports[-1]["metrics"]["eval_accuracy"]
    monkeypatch.syspath_prepend(str(code_dir(NAME)))
    assert predicted_accuracy(NAME, data, out) > 0.85


@pytest.mark.slow
def test_conveyor_run_evaluates_the_transformers_model(tmp_path: Path) -> None:
    status = run_example(NAME, tmp_path / "run", HF_HUB_OFFLINE="1")
    assert status["phase"] == "Succeeded"
    assert report(tmp_path / "run", "model")["metrics"]["accuracy"] > 0.85

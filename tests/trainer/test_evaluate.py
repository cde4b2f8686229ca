"""evaluate: report, plots and gate on real tiny models, through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conveyor.trainer import artifacts, metrics
from conveyor.trainer.__main__ import main
from conveyor.trainer.config import GateSpec
from conveyor.trainer.evaluate import evaluate, gate_outcome
from conveyor.trainer.predictor import load_predictor
from tests.trainer.tiny_models import load_split, make_data_dir, make_model_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """`python -m conveyor.trainer evaluate ...`, in-process (the same dispatch, no interpreter start-up)."""
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    make_model_dir(root / "model", make_data_dir(root))
    return root


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 2000


def test_classification_report_plots_and_gate_via_cli(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_dir / "evaluation" / "model"
    code, stdout, stderr = cli(capsys, "--model", run_dir / "model", "--data", run_dir / "data", "--out", out,
                               "--gate-json", '{"metric": "accuracy", "min": 0.5}')
    assert code == 0, stderr
    report = json.loads((out / artifacts.REPORT_FILE).read_text())
    x, y = load_split(run_dir / "data", "test")
    expected = metrics.compute_metrics("classification", y, load_predictor(run_dir / "model").predict(x))
    assert report["metrics"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert report["metrics"]["loss"] == pytest.approx(expected["logLoss"])
    assert {"f1", "f1Weighted", "rocAuc", "logLoss", "precision", "recall"} <= set(report["metrics"])
    matrix = np.asarray(report["confusionMatrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == len(y)
    assert np.trace(matrix) / len(y) == pytest.approx(report["metrics"]["accuracy"])
    assert sum(c["support"] for c in report["perClass"].values()) == len(y)
    assert report["gate"]["passed"] is True
    assert set(report["plots"]) == {"confusionMatrix", "roc", "learningCurves"}
    for name in report["plots"].values():
        assert is_png(out / name), name
    result = json.loads((out / artifacts.RESULT_FILE).read_text())
    assert result["status"] == "succeeded" and result["gate"]["passed"] is True
    accuracy = report["metrics"]["accuracy"]
    assert result["objective"] == {"metric": "accuracy", "goal": "maximize", "value": accuracy}
    assert json.loads(stdout.strip().splitlines()[-1])["event"] == "result"


def test_failed_gate_is_a_result_not_an_error(run_dir: Path, tmp_path: Path) -> None:
    gate = GateSpec(metric="accuracy", min=0.999)
    report = evaluate(run_dir / "model", run_dir / "data", tmp_path, gate=gate, plots_enabled=False)
    assert report["gate"]["passed"] is False
    assert "fails the gate" in report["gate"]["message"]


def test_gate_from_the_card_config(run_dir: Path, tmp_path: Path) -> None:
    card = artifacts.read_card(run_dir / "model")
    card.config.evaluation.gate = GateSpec(metric="logLoss", max=1e-9)
    model = tmp_path / "model"
    model.mkdir()
    (model / artifacts.WEIGHTS_FILE).write_bytes((run_dir / "model" / artifacts.WEIGHTS_FILE).read_bytes())
    artifacts.write_card(model, card)
    report = evaluate(model, run_dir / "data", tmp_path / "eval", plots_enabled=False)
    assert report["gate"]["metric"] == "logLoss" and report["gate"]["passed"] is False
    assert report["plots"] == {}
    assert "learningCurves" not in report["plots"]  # no progress.jsonl in this model directory


@pytest.mark.parametrize(
    ("gate", "values", "passed"),
    [
        (GateSpec(metric="accuracy", min=0.9), {"accuracy": 0.9}, True),
        (GateSpec(metric="accuracy", min=0.9), {"accuracy": 0.89}, False),
        (GateSpec(metric="rmse", max=3.0), {"rmse": 3.5}, False),
        (GateSpec(metric="rmse", min=1.0, max=3.0), {"rmse": 2.0}, True),
        (GateSpec(metric="rocAuc", min=0.5), {"accuracy": 1.0}, False),  # metric undefined: not served
    ],
)
def test_gate_outcome(gate: GateSpec, values: dict[str, float], passed: bool) -> None:
    outcome = gate_outcome(gate, values)
    assert outcome is not None and outcome["passed"] is passed


def test_regression_report_has_residuals(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path, "diabetes")
    make_model_dir(tmp_path / "model", data, steps=60)
    report = evaluate(tmp_path / "model", data, tmp_path / "eval", gate=GateSpec(metric="r2", min=0.0))
    assert {"mse", "rmse", "mae", "r2", "loss"} <= set(report["metrics"])
    assert report["metrics"]["rmse"] == pytest.approx(report["metrics"]["mse"] ** 0.5)
    assert "confusionMatrix" not in report
    assert is_png(tmp_path / "eval" / "residuals.png")
    assert report["gate"]["passed"] is True


def test_missing_data_fails_with_a_result(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = cli(capsys, "--model", run_dir / "model", "--data", tmp_path, "--out", tmp_path / "x")
    assert code == 1
    assert "metadata.json" in stderr
    result = json.loads((tmp_path / "x" / artifacts.RESULT_FILE).read_text())
    assert result["status"] == "failed" and result["reason"] == "FileNotFoundError"

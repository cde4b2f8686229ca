"""ensemble: weights from validation scores, method rules, and end to end on tiny trained models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conveyor.trainer import artifacts, metrics
from conveyor.trainer.__main__ import main
from conveyor.trainer.ensemble import build, member_reference, score_weights
from conveyor.trainer.evaluate import evaluate
from conveyor.trainer.predictor import load_predictor
from tests.trainer.tiny_models import load_split, make_data_dir, make_model_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    data = make_data_dir(root)
    for index, (hidden, steps) in enumerate([(32, 60), (16, 30), (8, 10)]):
        make_model_dir(root / "trials" / f"t{index}", data, hidden=hidden, steps=steps, seed=index)
    return root


def members(run_dir: Path) -> list[Path]:
    return [run_dir / "trials" / f"t{i}" for i in range(3)]


@pytest.mark.parametrize(
    ("scores", "metric", "expected"),
    [
        ([0.9, 0.6], "accuracy", [0.6, 0.4]),
        ([1.0, 3.0], "rmse", [0.75, 0.25]),  # minimised: 1/score
        ([0.5, -0.5], "r2", [0.5 / (0.5 + 1e-6), 1e-6 / (0.5 + 1e-6)]),  # negative score floored
    ],
)
def test_score_weights(scores: list[float], metric: str, expected: list[float]) -> None:
    assert score_weights(scores, metric) == pytest.approx(expected)


def test_member_reference_relative_inside_the_run(tmp_path: Path) -> None:
    assert member_reference(tmp_path / "trials" / "t1", tmp_path / "ensemble") == "../trials/t1"
    outside = tmp_path.parent / "elsewhere"
    assert member_reference(outside, tmp_path / "ensemble") == str(outside.resolve())


def test_soft_voting_end_to_end_via_cli(run_dir: Path) -> None:
    out = run_dir / "ensemble"
    code = main(["ensemble", "--models", *map(str, members(run_dir)), "--method", "softVoting",
                 "--data", str(run_dir / "data"), "--out", str(out)])
    assert code == 0
    card = artifacts.read_card(out)
    assert card.kind == "ensemble" and card.method == "softVoting"
    assert card.members == ["../trials/t0", "../trials/t1", "../trials/t2"]
    x, y = load_split(run_dir / "data", "validation")
    probas = [load_predictor(m).predict(x) for m in members(run_dir)]
    expected = metrics.compute_metrics("classification", y, np.mean(probas, axis=0))
    assert card.metrics["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
    assert card.metrics["logLoss"] == pytest.approx(expected["logLoss"], abs=1e-5)
    result = json.loads((out / artifacts.RESULT_FILE).read_text())
    assert result["status"] == "succeeded" and result["objective"]["metric"] == "accuracy"
    # Evaluated like a model; served from a moved run directory.
    report = evaluate(out, run_dir / "data", run_dir / "evaluation" / "ensemble", plots_enabled=False)
    assert report["kind"] == "ensemble" and report["metrics"]["accuracy"] > 0.8


def test_weighted_average_uses_validation_scores(run_dir: Path, tmp_path: Path) -> None:
    card = build(members(run_dir), "weightedAverage", run_dir / "data", tmp_path / "ens")
    scores = [artifacts.read_card(m).metrics["accuracy"] for m in members(run_dir)]
    assert card.weights == pytest.approx([s / sum(scores) for s in scores])
    x, _ = load_split(run_dir / "data", "test")
    combined = load_predictor(tmp_path / "ens").predict(x)
    probas = [load_predictor(m).predict(x) for m in members(run_dir)]
    np.testing.assert_allclose(combined, np.tensordot(card.weights, probas, axes=1), atol=1e-6)


def test_weighted_average_on_a_minimised_metric(run_dir: Path, tmp_path: Path) -> None:
    card = build(members(run_dir), "weightedAverage", run_dir / "data", tmp_path / "ens", metric="logLoss")
    losses = [artifacts.read_card(m).metrics["logLoss"] for m in members(run_dir)]
    assert card.weights == pytest.approx(score_weights(losses, "logLoss"))
    assert int(np.argmax(card.weights)) == int(np.argmin(losses))


def test_hard_voting_is_the_majority_class(run_dir: Path, tmp_path: Path) -> None:
    build(members(run_dir), "hardVoting", run_dir / "data", tmp_path / "ens")
    x, _ = load_split(run_dir / "data", "test")
    votes = np.stack([load_predictor(m).predict(x).argmax(1) for m in members(run_dir)])
    combined = load_predictor(tmp_path / "ens").predict(x).argmax(1)
    agree = (votes[0] == votes[1]) | (votes[0] == votes[2])
    np.testing.assert_array_equal(combined[agree], votes[0][agree])
    majority_12 = (votes[1] == votes[2]) & (votes[0] != votes[1])
    np.testing.assert_array_equal(combined[majority_12], votes[1][majority_12])


def test_hard_voting_on_regression_is_a_clear_error(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path, "diabetes")
    make_model_dir(tmp_path / "m", data, steps=10)
    with pytest.raises(ValueError, match=r"hardVoting .* needs a classification task"):
        build([tmp_path / "m"], "hardVoting", data, tmp_path / "ens")


def test_regression_soft_voting_averages_predictions(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path, "diabetes")
    dirs = [make_model_dir(tmp_path / f"m{i}", data, steps=40, seed=i) for i in range(2)]
    card = build(dirs, "softVoting", data, tmp_path / "ens")
    x, _ = load_split(data, "test")
    mean = (load_predictor(dirs[0]).predict(x) + load_predictor(dirs[1]).predict(x)) / 2
    np.testing.assert_allclose(load_predictor(tmp_path / "ens").predict(x), mean, rtol=1e-5)
    assert {"rmse", "r2", "loss"} <= set(card.metrics)


def test_members_from_other_data_are_rejected(run_dir: Path, tmp_path: Path) -> None:
    data = make_data_dir(tmp_path, "diabetes")
    with pytest.raises(ValueError, match="different data"):
        build(members(run_dir)[:1], "softVoting", data, tmp_path / "ens")


def test_ensemble_survives_moving_the_run_directory(run_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    build(members(moved), "softVoting", moved / "data", moved / "ens")
    relocated = shutil.move(moved, tmp_path / "relocated")
    x, _ = load_split(Path(relocated) / "data", "test")
    assert load_predictor(Path(relocated) / "ens").predict(x).shape == (len(x), 10)

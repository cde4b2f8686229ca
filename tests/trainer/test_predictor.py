"""Predictor: single models and ensembles from model directories, raw vs normalised inputs, int8."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conveyor.trainer import artifacts, metrics
from conveyor.trainer.artifacts import ModelCard
from conveyor.trainer.predictor import combine, load_predictor, member_weights
from tests.trainer.tiny_models import load_split, make_data_dir, make_model_dir


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("run")
    data = make_data_dir(root)
    return data, make_model_dir(root / "model", data)


def test_single_model_probabilities_are_accurate(digits: tuple[Path, Path]) -> None:
    data, model = digits
    predictor = load_predictor(model)
    x, y = load_split(data, "test")
    proba = predictor.predict(x)
    assert proba.shape == (len(y), 10) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert metrics.compute_metrics("classification", y, proba)["accuracy"] > 0.9


def test_raw_inputs_are_normalised_with_train_statistics(digits: tuple[Path, Path]) -> None:
    data, model = digits
    predictor = load_predictor(model)
    x, _ = load_split(data, "test")
    stats = predictor.metadata.normalization
    raw = x * np.asarray(stats.scale, dtype=np.float32) + np.asarray(stats.shift, dtype=np.float32)
    np.testing.assert_allclose(predictor.predict_raw(raw), predictor.predict(x), atol=1e-5)


def test_flat_or_wrong_shapes(digits: tuple[Path, Path]) -> None:
    data, model = digits
    predictor = load_predictor(model)
    x, _ = load_split(data, "test")
    assert predictor.predict(x[:3].reshape(3, 8, 8)).shape == (3, 10)  # same count of values: reshaped
    with pytest.raises(ValueError, match=r"does not match \[n, 64\]"):
        predictor.predict(x[:3, :10])


def test_int8_quantization_nearly_agrees(digits: tuple[Path, Path]) -> None:
    data, model = digits
    x, _ = load_split(data, "test")
    exact = load_predictor(model).predict(x)
    quantized = load_predictor(model, quantization="int8")
    assert "DynamicQuantizedLinear" in repr(quantized.module)  # type: ignore[attr-defined]
    approx = quantized.predict(x)
    assert np.abs(approx - exact).mean() < 0.01, np.abs(approx - exact).max()
    assert (approx.argmax(1) == exact.argmax(1)).mean() > 0.98


def test_ensemble_with_relative_members_survives_a_move(tmp_path: Path, digits: tuple[Path, Path]) -> None:
    data, model = digits
    run = tmp_path / "run"
    shutil.copytree(model, run / "trials" / "a")
    make_model_dir(run / "trials" / "b", data, hidden=16, seed=1)
    card = artifacts.read_card(run / "trials" / "a")
    ensemble = ModelCard(kind="ensemble", name="ensemble", config=card.config, dataset=card.dataset,
                         members=["../trials/a", "../trials/b"], weights=[3.0, 1.0], method="weightedAverage")
    artifacts.write_card(run / "ensemble", ensemble)
    moved = shutil.move(run, tmp_path / "moved")
    x, _ = load_split(data, "test")
    combined = load_predictor(Path(moved) / "ensemble").predict(x[:50])
    a = load_predictor(Path(moved) / "trials" / "a").predict(x[:50])
    b = load_predictor(Path(moved) / "trials" / "b").predict(x[:50])
    np.testing.assert_allclose(combined, 0.75 * a + 0.25 * b, atol=1e-6)


def test_regression_predicts_values(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path, "diabetes")
    predictor = load_predictor(make_model_dir(tmp_path / "model", data, steps=100))
    x, y = load_split(data, "test")
    pred = predictor.predict(x)
    assert pred.shape == (len(y),)
    assert metrics.compute_metrics("regression", y, pred)["r2"] > 0.2


def test_combine_rules() -> None:
    p1 = np.array([[0.6, 0.4], [0.2, 0.8]])
    p2 = np.array([[0.1, 0.9], [0.4, 0.6]])
    p3 = np.array([[0.45, 0.55], [0.7, 0.3]])
    soft = combine("softVoting", [p1, p2, p3], member_weights("softVoting", [], 3))
    np.testing.assert_allclose(soft, (p1 + p2 + p3) / 3, rtol=1e-6)
    hard = combine("hardVoting", [p1, p2, p3], member_weights("hardVoting", [], 3))
    assert hard.argmax(1).tolist() == [1, 1]  # votes: row 0 -> 0,1,1; row 1 -> 1,1,0
    np.testing.assert_allclose(hard[0], [1 / 3, 2 / 3], atol=1e-3)
    tie = combine("hardVoting", [p1, p2], member_weights("hardVoting", [], 2))
    assert tie[0].argmax() == 1  # 1-1 tie: class 1 has the higher mean probability (0.65)
    weighted = combine("weightedAverage", [p1, p2], member_weights("weightedAverage", [1.0, 3.0], 2))
    np.testing.assert_allclose(weighted, 0.25 * p1 + 0.75 * p2, rtol=1e-6)
    with pytest.raises(ValueError, match="2 members but 3 weights"):
        member_weights("weightedAverage", [1.0, 1.0, 1.0], 2)


def test_hard_voting_rejects_regression(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path, "diabetes")
    make_model_dir(tmp_path / "m", data, steps=10)
    card = artifacts.read_card(tmp_path / "m")
    update = {"kind": "ensemble", "members": [str(tmp_path / "m")], "method": "hardVoting"}
    card = card.model_copy(update=update)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "model.json").write_text(json.dumps(card.model_dump(mode="json", by_alias=True)))
    with pytest.raises(ValueError, match="hardVoting needs a classification task"):
        load_predictor(tmp_path / "e")

"""The training loop in one process (world size 1), its pieces, and the `train` stage's CLI contract."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conveyor.trainer import distributed, progress
from conveyor.trainer.artifacts import CHECKPOINT_DIR, LATEST_CHECKPOINT, read_card
from conveyor.trainer.config import ScheduleSpec
from conveyor.trainer.data.prepare import load_split
from conveyor.trainer.metrics import compute_metrics
from conveyor.trainer.models import build_model
from conveyor.trainer.train import (
    EarlyStopping,
    InMemoryBatches,
    batch_count,
    random_shift,
    schedule_factor,
    train,
)
from tests.trainer.training_helpers import cli, config, model_accuracy, prepared


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared(tmp_path_factory.mktemp("digits"), data={"source": "builtin://digits"})


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared(tmp_path_factory.mktemp("iris"), data={"source": "builtin://iris"})


def test_digits_with_defaults_reaches_a_sensible_accuracy(digits: Path, tmp_path: Path) -> None:
    result = train(config(training={"epochs": 12}), digits, tmp_path)
    assert result["status"] == "succeeded"
    assert model_accuracy(tmp_path, digits) >= 0.95
    saved = progress.read_result(tmp_path)
    assert saved is not None and saved["objective"]["metric"] == "accuracy"
    assert saved["objective"]["value"] == pytest.approx(saved["metrics"]["accuracy"])
    events = progress.read_events(tmp_path)
    assert [e["epoch"] for e in events] == list(range(1, saved["epochsRun"] + 1))
    assert all(e["samplesPerSecond"] > 0 and "trainLoss" in e["metrics"] for e in events)
    best = events[saved["bestEpoch"] - 1]["metrics"]
    assert best["accuracy"] == max(e["metrics"]["accuracy"] for e in events)
    card = read_card(tmp_path)
    assert card.metrics["accuracy"] == pytest.approx(best["accuracy"], abs=1e-6)
    # weights.pt holds the best epoch's weights: they reproduce its validation accuracy.
    assert model_accuracy(tmp_path, digits, "validation") == pytest.approx(best["accuracy"], abs=1e-6)


def test_regression_on_diabetes(tmp_path: Path) -> None:
    sections = {"task": {"type": "regression"}, "data": {"source": "builtin://diabetes"}}
    data_dir = prepared(tmp_path, **sections)
    cfg = config(**sections, training={"epochs": 25, "batchSize": 32}, optimizer={"learningRate": 0.003})
    result = train(cfg, data_dir, tmp_path / "model")
    assert result["objective"]["metric"] == "rmse"
    card = read_card(tmp_path / "model")
    model = build_model(card.config.model, card.dataset).eval()
    model.load_state_dict(torch.load(tmp_path / "model" / "weights.pt", weights_only=True))
    x, y = load_split(data_dir, "test")
    with torch.no_grad():
        predictions = model(torch.from_numpy(x)).squeeze(1).numpy()
    assert compute_metrics("regression", y, predictions)["r2"] > 0.3  # in target units, not standardised


def test_early_stopping_stops_all_after_patience(iris: Path, tmp_path: Path) -> None:
    cfg = config(
        data={"source": "builtin://iris"},
        training={"epochs": 20, "earlyStopping": {"patience": 2, "minDelta": 0.9}},
    )
    result = train(cfg, iris, tmp_path)
    assert result["stoppedEarly"] and result["epochsRun"] == 3 and result["bestEpoch"] == 1
    assert len(progress.read_events(tmp_path)) == 3


@pytest.mark.parametrize(
    ("training", "waits"),
    [
        ({"epochs": 9}, [1, 3]),  # not after the last epoch: nothing is left to decide
        ({"epochs": 3}, [1]),
        ({"epochs": 9, "earlyStopping": {"patience": 1, "minDelta": 0.9}}, [1]),  # stopped at 2
    ],
)
def test_a_trial_waits_for_its_verdict_after_each_rung_with_the_epoch_reported_and_saved(
    training: dict[str, object], waits: list[int], iris: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(progress.VERDICT_EPOCHS_ENV, "1,3")
    seen: list[tuple[int, int, int]] = []

    def await_verdict(model_dir: Path, epoch: int) -> bool:
        saved = torch.load(model_dir / CHECKPOINT_DIR / LATEST_CHECKPOINT, weights_only=False)["epoch"]
        seen.append((epoch, len(progress.read_events(model_dir)), saved))
        return True

    monkeypatch.setattr(progress, "await_verdict", await_verdict)
    train(config(data={"source": "builtin://iris"}, training=training), iris, tmp_path)
    assert seen == [(epoch, epoch, epoch) for epoch in waits]


@pytest.mark.parametrize(
    ("optimizer", "training", "model"),
    [
        (
            {"name": "sgd", "learningRate": 0.05, "schedule": {"name": "step", "stepSize": 1, "gamma": 0.5}},
            {"gradientClipping": 1.0},
            {"architecture": "cnn", "hiddenSize": 16},
        ),
        (
            {"name": "adam", "schedule": {"name": "cosine", "warmupEpochs": 1}},
            {"precision": "bf16"},
            {"architecture": "resnet", "hiddenSize": 16},
        ),
        (
            {"name": "adagrad", "learningRate": 0.05, "schedule": {"name": "onecycle"}},
            {"labelSmoothing": 0.1},
            {"architecture": "lstm", "hiddenSize": 16},
        ),
        (
            {"name": "rmsprop", "learningRate": 0.0003},
            {"precision": "fp16"},
            {"architecture": "transformer", "hiddenSize": 16, "heads": 2},
        ),
    ],
    ids=["sgd-step-clip-cnn", "adam-cosine-bf16-resnet", "adagrad-onecycle-lstm", "rmsprop-fp16-transformer"],
)
def test_optimizers_schedules_precisions(
    iris: Path,
    tmp_path: Path,
    optimizer: dict[str, object],
    training: dict[str, object],
    model: dict[str, object],
) -> None:
    cfg = config(
        data={"source": "builtin://iris"},
        optimizer=optimizer,
        model=model,
        training={"epochs": 4, "batchSize": 16, "earlyStopping": None, **training},
    )
    result = train(cfg, iris, tmp_path)
    events = progress.read_events(tmp_path)
    assert result["epochsRun"] == 4 and len(events) == 4
    assert all(math.isfinite(e["metrics"]["trainLoss"]) for e in events)
    assert events[-1]["metrics"]["trainLoss"] < events[0]["metrics"]["trainLoss"]


def test_finished_run_is_not_repeated_and_corrupt_checkpoint_starts_fresh(
    iris: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(data={"source": "builtin://iris"}, training={"epochs": 3, "earlyStopping": None})
    first = train(cfg, iris, tmp_path)
    weights = (tmp_path / "weights.pt").read_bytes()
    again = train(cfg, iris, tmp_path)  # a restarted pod after the work was done
    assert len(progress.read_events(tmp_path)) == 3 and again["bestEpoch"] == first["bestEpoch"]
    assert (tmp_path / "weights.pt").read_bytes() == weights
    checkpoint = tmp_path / "checkpoints" / "latest.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated by a dying disk
    capsys.readouterr()
    train(cfg, iris, tmp_path)
    assert "could not be loaded" in capsys.readouterr().err
    assert [e["epoch"] for e in progress.read_events(tmp_path)] == [1, 2, 3, 1, 2, 3]


class Killed(Exception):
    """Stands in for a pod killed mid-epoch."""


def test_interrupted_run_resumes_as_if_it_had_never_stopped(
    iris: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(  # the noise draws on the RNG every epoch: a resumed run needs its RNG states back
        data={"source": "builtin://iris", "augmentation": {"gaussianNoise": 0.2}},
        training={"epochs": 5, "batchSize": 16, "earlyStopping": None},
    )
    whole = train(cfg, iris, tmp_path / "whole")
    emit = progress.emit

    def dying_emit(model_dir: Path, event: dict[str, object]) -> None:
        if event["epoch"] == 3:
            raise Killed  # after epoch 3's training, before its report and checkpoint
        emit(model_dir, event)

    monkeypatch.setattr(progress, "emit", dying_emit)
    with pytest.raises(Killed):
        train(cfg, iris, tmp_path / "resumed")
    monkeypatch.setattr(progress, "emit", emit)
    capsys.readouterr()
    resumed = train(cfg, iris, tmp_path / "resumed")
    assert "after epoch 2" in capsys.readouterr().err

    def comparable(model_dir: Path) -> list[dict[str, object]]:
        timing = ("samplesPerSecond", "etaSeconds", "elapsedSeconds")
        return [{k: v for k, v in e.items() if k not in timing} for e in progress.read_events(model_dir)]

    assert comparable(tmp_path / "resumed") == comparable(tmp_path / "whole")
    assert {**resumed, "durationSeconds": 0} == {**whole, "durationSeconds": 0}
    weights = [torch.load(tmp_path / d / "weights.pt", weights_only=True) for d in ("whole", "resumed")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_dataloader_path_trains_like_the_in_memory_path(
    iris: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folder images and big sets go through a DataLoader (workers, DistributedSampler); forced here."""
    monkeypatch.setenv("CONVEYOR_DATA_PATH", "loader")
    cfg = config(
        data={"source": "builtin://iris"}, training={"epochs": 4, "batchSize": 16, "earlyStopping": None}
    )
    result = train(cfg, iris, tmp_path)
    events = progress.read_events(tmp_path)
    assert result["epochsRun"] == 4 and events[-1]["metrics"]["trainLoss"] < events[0]["metrics"]["trainLoss"]
    assert result["objective"]["value"] >= 0.8


# --- pieces -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "steps", "expected"),
    [
        ({"name": "constant"}, [0, 50, 99], [1.0, 1.0, 1.0]),
        (
            {"name": "constant", "warmupEpochs": 2},
            [0, 9, 19, 20, 99],
            [0.1 / 2.1 * 1.0, 10 / 21, 20 / 21, 1, 1],
        ),
        ({"name": "step", "stepSize": 3, "gamma": 0.5}, [0, 29, 30, 60, 99], [1, 1, 0.5, 0.25, 0.125]),
        ({"name": "cosine"}, [0, 50, 99], [1.0, 0.5, 0.5 * (1 + math.cos(math.pi * 0.99))]),
    ],
)
def test_schedule_factor(schedule: dict[str, object], steps: list[int], expected: list[float]) -> None:
    factor = schedule_factor(ScheduleSpec.model_validate(schedule), steps_per_epoch=10, total_steps=100)
    assert [factor(s) for s in steps] == pytest.approx(expected, rel=1e-6)


def test_onecycle_rises_then_anneals() -> None:
    factor = schedule_factor(ScheduleSpec(name="onecycle"), steps_per_epoch=10, total_steps=100)
    values = [factor(s) for s in range(100)]
    peak = int(np.argmax(values))
    assert (
        values[0] == pytest.approx(1 / 25) and 25 <= peak <= 31 and values[peak] == pytest.approx(1, abs=1e-3)
    )
    assert values[-1] < 0.01 and all(a >= b for a, b in zip(values[peak:], values[peak + 1 :], strict=False))


def test_shards_are_disjoint_seeded_and_cover_the_split() -> None:
    x = torch.arange(103, dtype=torch.float32)[:, None]
    y = torch.arange(103)
    seen = []
    for rank in (0, 1):
        ctx = distributed.Context(rank, 2, rank, torch.device("cpu"), "gloo")
        batches = InMemoryBatches(x, y, 16, ctx, seed=1, augment=None)
        rows = torch.cat([yb for _, yb in batches.epoch(3)])
        assert rows.tolist() == torch.cat([yb for _, yb in batches.epoch(3)]).tolist()  # seeded
        assert rows.tolist() != torch.cat([yb for _, yb in batches.epoch(4)]).tolist()  # reshuffled
        assert len(rows) == 51 and batches.steps == 4
        seen.append(set(rows.tolist()))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 102


def test_batch_count_drops_a_lonely_last_row() -> None:
    assert [batch_count(n, 16) for n in (16, 17, 18, 33, 1)] == [1, 1, 2, 2, 1]


def test_random_shift_moves_whole_images_within_bounds() -> None:
    torch.manual_seed(0)
    image = torch.zeros(1, 1, 7, 7)
    image[0, 0, 3, 3] = 1.0
    shifted = random_shift(image.repeat(200, 2, 1, 1), 1)
    assert shifted.shape == (200, 2, 7, 7)
    positions = {tuple(torch.nonzero(s[0]).flatten().tolist()) for s in shifted}
    assert positions == {(r, c) for r in (2, 3, 4) for c in (2, 3, 4)}  # all 9 offsets, nothing else
    assert torch.equal(shifted[:, 0], shifted[:, 1])  # channels move together
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), torch.full((200,), 2.0))


def test_early_stopping_respects_direction_and_min_delta() -> None:
    stop = EarlyStopping(maximize=False, patience=2, min_delta=0.1)
    assert [stop.update(v, e) for e, v in enumerate([1.0, 0.95, 0.8, float("nan"), 0.75], 1)] == [
        True,
        False,
        True,
        False,
        False,
    ]
    assert stop.should_stop and stop.best == 0.8 and stop.best_epoch == 3


# --- the stage's command line -------------------------------------------------------------------


def test_only_rank_0_reads_the_validation_split(iris: Path, tmp_path: Path) -> None:
    import shutil

    from conveyor.trainer.artifacts import read_metadata
    from conveyor.trainer.train import load_data

    data_dir = tmp_path / "data"
    shutil.copytree(iris, data_dir)
    (data_dir / "validation.npz").unlink()
    cfg, meta = config(), read_metadata(data_dir)

    def context(rank: int) -> distributed.Context:
        return distributed.Context(rank, 2, rank, torch.device("cpu"), "gloo")

    batches, validation = load_data(cfg, meta, data_dir, context(1))
    assert batches.steps > 0
    with pytest.raises(RuntimeError, match="only rank 0 validates"):
        validation(torch.nn.Identity(), torch.nn.functional.cross_entropy, torch.no_grad)
    with pytest.raises(FileNotFoundError):
        load_data(cfg, meta, data_dir, context(0))


def test_bad_config_fails_with_status_2_and_a_failed_result(iris: Path, tmp_path: Path) -> None:
    done = cli("train", "--config", '{"optimizer": {"name": "lbfgs"}}', "--data", iris, "--out", tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "optimizer.name" in done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed" and result["reason"] == "InvalidConfig"
    assert "sgd" in result["message"]


def test_missing_dataset_is_a_data_error(tmp_path: Path) -> None:
    done = cli("train", "--config", "{}", "--data", tmp_path / "nothing", "--out", tmp_path / "m")
    assert done.returncode == 2 and "prepare" in done.stderr
    assert json.loads((tmp_path / "m" / "result.json").read_text())["reason"] == "DataError"


def test_config_file_and_stage_help(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("training:\n  epochs: 0\n")
    done = cli("train", "--config", tmp_path / "c.yaml", "--data", tmp_path, "--out", tmp_path / "m")
    assert done.returncode == 2 and "training.epochs" in done.stderr
    listing = cli("--help")
    assert listing.returncode == 0 and all(s in listing.stdout for s in ("prepare", "train", "serve"))

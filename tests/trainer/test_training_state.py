"""The training state: a checkpoint round trip restores all of it, so a resumed run continues identically."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conveyor.trainer import checkpoint, distributed
from conveyor.trainer.training_state import EarlyStopping, TrainingState

ALONE = distributed.Context(0, 1, 0, torch.device("cpu"), "gloo")


def build(seed: int, fingerprint: str = "run") -> TrainingState:
    """A fresh process's state: weights from `seed`, momentum, a decaying LR and a growing grad scale."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return TrainingState(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.8**step),
        scaler=torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=2),
        stopping=EarlyStopping(maximize=True, patience=3),
        fingerprint={"run": fingerprint},
        ctx=ALONE,
    )


def steps(state: TrainingState, count: int) -> list[float]:
    """`count` training steps; the Python, numpy and torch RNGs draw the batches, torch's the dropout."""
    losses = []
    state.model.train()
    for _ in range(count):
        x = torch.randn(8, 4) + float(np.random.rand()) + random.random()
        y = torch.randint(0, 3, (8,))
        loss = F.cross_entropy(state.model(x), y)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        losses.append(loss.item())
    return losses


def reseed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_resumed_state_continues_exactly_like_an_uninterrupted_run(tmp_path: Path) -> None:
    reseed(0)
    expected = steps(build(seed=0), 6)

    reseed(0)
    first = build(seed=0)
    assert steps(first, 3) == expected[:3]
    first.epoch = 3
    metrics = {"accuracy": 0.5, "loss": 1.2, "trainLoss": 1.0, "learningRate": 0.05}
    assert not first.record(3, metrics, "accuracy")
    path = tmp_path / "checkpoints" / "latest.pt"
    first.save(path)
    written = checkpoint.load(path)
    assert written is not None
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    scaler, stopping = first.scaler.state_dict(), dataclasses.replace(first.stopping)
    steps(first, 2)  # the lost attempt ran on past its checkpoint

    reseed(1)  # a new process, seeded and initialised differently
    resumed = build(seed=1)
    assert resumed.resume(path)
    assert resumed.epoch == 3 and not resumed.finished
    assert resumed.stopping == stopping and resumed.stopping.best_epoch == 3
    assert resumed.best_metrics == {"accuracy": 0.5, "loss": 1.2}  # the training's own metrics left out
    assert resumed.best_weights is not None
    for name, value in weights.items():
        assert torch.equal(resumed.model.state_dict()[name], value)
        assert torch.equal(resumed.best_weights[name], value)
    assert resumed.scaler.state_dict() == scaler and resumed.scaler.get_scale() == 32.0
    assert resumed.scheduler.last_epoch == 3 and resumed.earlier_seconds == written["elapsed"]
    # Weights, momentum, learning rate and every RNG are back: the next losses are the very same.
    assert steps(resumed, 3) == expected[3:]


def test_record_decides_early_stopping_and_keeps_a_copy_of_the_best_weights() -> None:
    state = build(seed=0)  # maximize, patience 3
    decisions = [state.record(epoch, {"score": value}, "score") for epoch, value in enumerate([3.0, 2.0], 1)]
    best = {k: v.clone() for k, v in state.model.state_dict().items()}
    steps(state, 1)
    decisions += [state.record(epoch, {"score": 2.5}, "score") for epoch in (3, 4)]
    assert decisions == [False, False, False, True]  # 2.0, 2.5, 2.5 never beat 3.0
    assert state.best_metrics == {"score": 3.0} and state.best_weights is not None
    assert all(torch.equal(state.best_weights[k], v) for k, v in best.items())
    assert state.record(5, {"accuracy": 1.0}, "score")  # a missing metric never improves
    state.stopping = EarlyStopping(maximize=False, patience=1)
    assert not state.record(6, {"score": 1.0}, "score") and state.best_metrics == {"score": 1.0}
    assert not all(torch.equal(state.best_weights[k], v) for k, v in best.items())  # the new best's copy


def test_checkpoint_of_another_configuration_or_none_is_not_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latest.pt"
    assert not build(seed=0).resume(path)
    other = build(seed=0, fingerprint="other")
    other.epoch = 5
    other.save(path)
    fresh = build(seed=1)
    weights = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    capsys.readouterr()
    assert not fresh.resume(path)
    assert "different configuration" in capsys.readouterr().err
    assert fresh.epoch == 0 and all(torch.equal(fresh.model.state_dict()[k], v) for k, v in weights.items())

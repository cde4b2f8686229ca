"""Shared pieces of the data, model and training tests: configs, prepared sets, the CLI and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from conveyor.trainer.artifacts import read_card
from conveyor.trainer.config import TrainerConfig
from conveyor.trainer.data.prepare import load_split, prepare

REPO = Path(__file__).resolve().parents[2]


def config(**sections: Any) -> TrainerConfig:
    """A TrainerConfig from manifest-style sections, e.g. config(model={"architecture": "cnn"})."""
    return TrainerConfig.model_validate(sections)


def prepared(root: Path, **sections: Any) -> Path:
    data_dir = root / "data"
    prepare(config(**sections), data_dir)
    return data_dir


def child_env(**extra: str) -> dict[str, str]:
    """Environment for trainer subprocesses: one thread each (2 shared cores), no termination log."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env["CONVEYOR_TERMINATION_LOG"] = "/nonexistent/termination-log"
    return env


def cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.trainer", *map(str, args)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
        cwd=REPO,
    )


def torchrun_command(nproc: int, *args: str | Path, max_restarts: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "-m",
        "conveyor.trainer",
        *map(str, args),
    ]


def as_json(cfg: TrainerConfig) -> str:
    return json.dumps(cfg.to_wire())


def model_accuracy(model_dir: Path, data_dir: Path, split: str = "test") -> float:
    """Accuracy of a model directory's weights on a prepared split, rebuilt as serving would."""
    import torch

    from conveyor.trainer.models import build_model

    card = read_card(model_dir)
    model = build_model(card.config.model, card.dataset)
    model.load_state_dict(torch.load(model_dir / "weights.pt", weights_only=True))
    x, y = load_split(data_dir, split)
    with torch.no_grad():
        predicted = model.eval()(torch.from_numpy(x)).argmax(1).numpy()
    return float(np.mean(predicted == y))

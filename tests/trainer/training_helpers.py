"""Shared pieces of the data, model and training tests: configs, prepared sets, the CLI and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conveyor.trainer.config import TrainerConfig
from conveyor.trainer.data.prepare import prepare

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

"""Running an example as its README says: `conveyor run -f examples/<name>/pipeline.yaml`, to the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conveyor.operator.api.resource import load_manifest
from conveyor.trainer.config import TrainerConfig

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CONVEYOR = [sys.executable, "-m", "conveyor.cli"]


def manifest(name: str) -> Path:
    return EXAMPLES / name / "pipeline.yaml"


def trainer_config(name: str) -> TrainerConfig:
    (pipeline,) = load_manifest(manifest(name))
    config: TrainerConfig = pipeline.spec.trainer_config()
    return config


def run_example(name: str, root: Path, **env: str) -> dict[str, Any]:
    """`conveyor run` of example `name` into `root` (no serving); returns its final status."""
    done = subprocess.run(
        [*CONVEYOR, "run", "-f", str(manifest(name)), "--root", str(root), "--plain", "--no-serve"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        timeout=900,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    status: dict[str, Any] = json.loads((root / "status.json").read_text())
    return status


def report(root: Path, model: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((root / "evaluation" / model / "report.json").read_text())
    return result

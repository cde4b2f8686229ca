"""Running a user-loop example the way the executors run its workloads, without `conveyor run`:
`prepare`, then `train` under torchrun (training.entrypoint) or the `command` stage (training.command,
`{{params.x}}` rendered with the manifest's value), with the code directory on the path; then the
checks every such example must pass: a succeeded result with the objective, and a saved model that
`load_predictor` loads and that predicts the test split."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from conveyor.operator.api.resource import load_manifest
from conveyor.trainer import progress
from conveyor.trainer.config import TrainerConfig
from conveyor.trainer.data.prepare import load_split
from conveyor.trainer.predictor import load_predictor
from tests.examples.conveyor_run import REPO, manifest, trainer_config


def code_dir(name: str) -> Path:
    (pipeline,) = load_manifest(manifest(name))
    return (manifest(name).parent / (pipeline.spec.code.path or ".")).resolve()


def environment(name: str, **extra: str) -> dict[str, str]:
    code = str(code_dir(name))
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        CONVEYOR_CODE=code,
        PYTHONPATH=code,
        CONVEYOR_PIPELINE=name,
        CONVEYOR_WORKLOAD="train",
        CONVEYOR_ATTEMPT="1",
        CONVEYOR_TERMINATION_LOG="/nonexistent/termination-log",
        **extra,
    )


def render(argv: list[str], config: TrainerConfig) -> list[str]:
    """What the executors do to training.command: {{params.<dotted>}} -> the configured value."""
    tree = config.to_wire()

    def value(match: re.Match[str]) -> str:
        node: Any = tree
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)

    return [re.sub(r"\{\{\s*params\.([\w.]+)\s*\}\}", value, part) for part in argv]


def run_directly(name: str, root: Path, processes: int = 2) -> tuple[Path, Path, dict[str, Any]]:
    """(data dir, model dir, result) of the example's training workload run by hand."""
    config = trainer_config(name)
    wire, data, out = json.dumps(config.to_wire()), root / "data", root / "model"
    env = environment(name)
    trainer = [sys.executable, "-m", "conveyor.trainer"]
    prepare = subprocess.run(
        [*trainer, "prepare", "--config", wire, "--out", str(data)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    if config.training.command:
        command = [
            *trainer,
            "command",
            "--config",
            wire,
            "--data",
            str(data),
            "--out",
            str(out),
            "--",
            *render(config.training.command, config),
        ]
        env["PET_NPROC_PER_NODE"] = str(processes)
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            "--max-restarts=0",
            "-m",
            "conveyor.trainer",
            "train",
            "--config",
            wire,
            "--data",
            str(data),
            "--out",
            str(out),
        ]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = progress.read_result(out)
    assert result is not None
    return data, out, result


def test_split(name: str, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The example's test split as evaluation reads it: prepared arrays, or data.entrypoint("test")."""
    config = trainer_config(name)
    if not config.data.entrypoint:
        return load_split(data, "test")
    from conveyor.trainer.usercode import entrypoint

    split = entrypoint(config.data.entrypoint, "data.entrypoint", ("split",))("test")
    return split.tensors[0].numpy(), split.tensors[1].numpy()


def predicted_accuracy(name: str, data: Path, model_dir: Path) -> float:
    x, y = test_split(name, data)
    return float(np.mean(load_predictor(model_dir).predict(x).argmax(1) == y))

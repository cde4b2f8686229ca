"""Time to >= 97% test accuracy on builtin://digits with default settings, whole process from start.

Runs exactly what a pipeline runs, as fresh processes with a cold start: `python -m conveyor.trainer
prepare --config '{}'`, then `train --config '{}'` (the default TrainerConfig: an MLP 256x2, AdamW 2e-3,
batch 64, up to 20 epochs with early stopping, patience 5) either as one plain process or under
torchrun with 2 processes. The clock covers both processes end to end (interpreter start, imports,
data preparation, training with per-epoch validation and checkpoints, writing the artifact). Test
accuracy is then measured (untimed) on the held-out test split with the saved best weights, through
`conveyor.trainer.predictor`-free plain torch so this benchmark depends on nothing but the trainer.

    .venv/bin/python benchmarks/time_to_accuracy.py                 # 3 runs each: 1 process, torchrun x2
    .venv/bin/python benchmarks/time_to_accuracy.py --runs 1 --modes single
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "time-to-accuracy"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
TARGET = 0.97


def test_accuracy(run_dir: Path) -> float:
    sys.path[:0] = [str(ROOT / "trainer")]
    import numpy as np
    import torch

    from conveyor.trainer.artifacts import read_card
    from conveyor.trainer.models import build_model

    card = read_card(run_dir / "model")
    model = build_model(card.config.model, card.dataset).eval()
    model.load_state_dict(torch.load(run_dir / "model" / "weights.pt", weights_only=True))
    with np.load(run_dir / "data" / "test.npz") as arrays:
        x, y = torch.from_numpy(arrays["x"]), arrays["y"]
    with torch.no_grad():
        return float((model(x).argmax(1).numpy() == y).mean())


def one_run(mode: str, index: int) -> dict[str, float | int | str]:
    run_dir = OUT / f"{mode}-{index}"
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, CONVEYOR_TERMINATION_LOG="/nonexistent")
    env.pop("OMP_NUM_THREADS", None)  # torchrun sets 1 per process; a single process decides itself
    train = [
        "-m",
        "conveyor.trainer",
        "train",
        "--config",
        "{}",
        "--data",
        str(run_dir / "data"),
        "--out",
        str(run_dir / "model"),
    ]
    if mode == "torchrun":
        train = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *train]
    start, cpu_start = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    for command in (
        ["-m", "conveyor.trainer", "prepare", "--config", "{}", "--out", str(run_dir / "data")],
        train,
    ):
        subprocess.run([PYTHON, *command], check=True, capture_output=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    cpu_end = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime)
    result = json.loads((run_dir / "model" / "result.json").read_text())
    return {
        "mode": mode,
        "seconds": round(seconds, 2),
        "cpuSeconds": round(cpu, 2),
        "testAccuracy": round(test_accuracy(run_dir), 4),
        "epochsRun": result["epochsRun"],
        "bestEpoch": result["bestEpoch"],
        "trainSeconds": result["durationSeconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["single", "torchrun"], choices=["single", "torchrun"])
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = []
    for index in range(1, args.runs + 1):
        for mode in args.modes:
            runs.append(one_run(mode, index))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    summary = {
        "started": started,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "command": " ".join(["python", *sys.argv]),
        "medianSeconds": {
            m: statistics.median(r["seconds"] for r in runs if r["mode"] == m) for m in args.modes
        },
        "allReachedTarget": all(float(r["testAccuracy"]) >= TARGET for r in runs),
        "runs": runs,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

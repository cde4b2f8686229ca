"""What the training-loop benchmarks share: the same data, the same loops, the same measurement.

`training_overhead.py` (Conveyor's loop vs a hand-written DDP loop vs Lightning, on the built-in
model) and `user_model_overhead.py` (Conveyor's loop vs the DDP loop on a user's model) compare loops
the same way, here: `builtin://synthetic` prepared once (in memory), AdamW at lr 2e-3 without weight
decay, no early stopping, 2 processes on gloo under torchrun with one thread each; contenders run one
after another, interleaved round by round so they share the machine's conditions; each run's first
epoch is warm-up and dropped, then the median epoch of each run and the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "training"
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
DDP_LOOP = "benchmarks/training_peers/ddp_loop.py"


def torchrun(python: Path, *args: str) -> list[str]:
    return [str(python), "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", CONVEYOR_TERMINATION_LOG="/nonexistent")
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:8])} ... failed:\n{done.stderr[-4000:]}")
    return done


def last_json(stdout: str) -> dict[str, list[float]]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The rounds, the epochs and the data every training benchmark takes."""
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=24000)
    parser.add_argument("--features", type=int, default=64)


def sections(args: argparse.Namespace) -> dict[str, Any]:
    """The manifest sections every loop shares (data, optimizer, training); the model is each one's."""
    return {
        "data": {
            "source": "builtin://synthetic",
            "synthetic": {"samples": args.samples, "features": args.features, "classes": 10},
        },
        "optimizer": {"name": "adamw", "learningRate": 2e-3, "weightDecay": 0.0},
        "training": {"epochs": args.epochs, "batchSize": args.batch_size, "earlyStopping": None},
    }


def prepared(config: Any, args: argparse.Namespace) -> tuple[Path, Any]:
    """The data directory (prepared once per size, reused across runs) and its metadata."""
    from conveyor.trainer.data.prepare import prepare

    data_dir = OUT / f"data-{args.samples}x{args.features}"
    return data_dir, prepare(config, data_dir)


def conveyor_rates(config: Any, data_dir: Path, out: Path) -> list[float]:
    """`python -m conveyor.trainer train` under torchrun; its per-epoch samples/s from progress.jsonl
    (validation, metrics and a checkpoint every epoch included in the run)."""
    subprocess.run(["rm", "-rf", str(out)], check=True)
    stage = ["-m", "conveyor.trainer", "train", "--config", json.dumps(config.to_wire())]
    run(torchrun(MAIN_PYTHON, *stage, "--data", str(data_dir), "--out", str(out)))
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    return [e["samplesPerSecond"] for e in events if e.get("event") == "epoch"]


def peer_rates(
    python: Path, script: str, data_dir: Path, spec: str, epochs: int, batch_size: int
) -> list[float]:
    """A peer loop (`training_peers/`) under torchrun on the same data and model spec (JSON); its
    per-epoch samples/s, the last JSON line it prints."""
    command = torchrun(python, script, str(data_dir), spec, str(epochs), str(batch_size))
    rates: list[float] = last_json(run(command).stdout)["samplesPerSecond"]
    return rates


def interleaved(
    rounds: int, contenders: dict[str, Callable[[int], list[float]]]
) -> dict[str, list[list[float]]]:
    """Every contender once per round, in order; each run's per-epoch samples/s, by contender."""
    raw: dict[str, list[list[float]]] = {name: [] for name in contenders}
    for round_ in range(1, rounds + 1):
        for name, contender in contenders.items():
            rates = contender(round_)
            raw[name].append(rates)
            print(
                f"round {round_} {name:16s} " + " ".join(f"{r:8.0f}" for r in rates),
                file=sys.stderr,
                flush=True,
            )
    return raw


def medians(raw: dict[str, list[list[float]]]) -> dict[str, float]:
    """Per contender: the median over rounds of each run's median epoch, the first epoch dropped."""
    return {name: statistics.median(statistics.median(r[1:]) for r in runs) for name, runs in raw.items()}


def summary(
    started: str,
    args: argparse.Namespace,
    meta: Any,
    models: dict[str, Any],
    rates: dict[str, float],
    ratios: dict[str, float],
    raw: Any,
) -> dict[str, Any]:
    """The JSON every training benchmark writes: when, where (the load average: the machine is shared),
    the exact command, the setup (`models` first), the medians, the ratios and the raw per-epoch
    numbers."""
    setup = {
        **models,
        "featureShape": meta.feature_shape,
        "trainRows": meta.sizes["train"],
        "batchSize": args.batch_size,
        "epochs": args.epochs,
        "processes": 2,
        "backend": "gloo",
    }
    return {
        "started": started,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "setup": setup,
        "samplesPerSecond": rates,
        **ratios,
        "raw": raw,
    }


def write(result: dict[str, Any], name: str) -> None:
    """`result` to benchmarks/out/training/`name`, and all but the raw numbers to stdout."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "raw"}, indent=1))


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

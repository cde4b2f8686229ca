"""Training-loop overhead: Conveyor's trainer vs a minimal hand-written DDP loop vs PyTorch Lightning.

All three train the same model (`conveyor.trainer.models.build_model`, same spec) on the same prepared
data (`builtin://synthetic`, in memory) with the same batch size and optimizer (AdamW, lr 2e-3, no
weight decay), as 2 processes on gloo under torchrun, one thread each (OMP_NUM_THREADS=1):

- conveyor:  `python -m conveyor.trainer train` (validation, metrics, checkpoints every epoch included
             in the run; samples/s is its own per-epoch training throughput from progress.jsonl)
- ddp:       `training_peers/ddp_loop.py`, the same sliced in-memory data path and nothing else
- lightning: `training_peers/lightning_loop.py`, Lightning's Trainer with its standard DataLoader
             (run from `.venv-bench`, which has pytorch-lightning; see README.md)

Contenders run one after another, interleaved round by round so they share the machine's conditions;
each run's first epoch is warm-up and dropped; the median epoch of each run, then the median over
rounds, is reported. Raw numbers go to benchmarks/out/training/overhead.json.

    .venv/bin/python benchmarks/training_overhead.py                  # ~3-4 minutes on 2 cores
    .venv/bin/python benchmarks/training_overhead.py --rounds 1 --contenders conveyor ddp
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "training"
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=24000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--architecture", default="mlp")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--contenders", nargs="+", default=["conveyor", "ddp", "lightning"])
    args = parser.parse_args()

    sys.path[:0] = [str(ROOT / "trainer")]
    from conveyor.trainer.config import ModelSpec, TrainerConfig
    from conveyor.trainer.data.prepare import prepare

    sections = {
        "data": {
            "source": "builtin://synthetic",
            "synthetic": {"samples": args.samples, "features": args.features, "classes": 10},
        },
        "model": {"architecture": args.architecture, "hiddenSize": args.hidden_size},
        "optimizer": {"name": "adamw", "learningRate": 2e-3, "weightDecay": 0.0},
        "training": {"epochs": args.epochs, "batchSize": args.batch_size, "earlyStopping": None},
    }
    config = TrainerConfig.model_validate(sections)
    data_dir = OUT / f"data-{args.samples}x{args.features}"
    meta = prepare(config, data_dir)
    spec = ModelSpec.model_validate(sections["model"]).model_dump_json(by_alias=True)
    common = [str(data_dir), spec, str(args.epochs), str(args.batch_size)]

    def conveyor(round_: int) -> list[float]:
        out = OUT / f"conveyor-{round_}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        run(
            torchrun(
                MAIN_PYTHON,
                "-m",
                "conveyor.trainer",
                "train",
                "--config",
                json.dumps(config.to_wire()),
                "--data",
                str(data_dir),
                "--out",
                str(out),
            )
        )
        events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
        return [e["samplesPerSecond"] for e in events]

    def ddp(round_: int) -> list[float]:
        return last_json(run(torchrun(MAIN_PYTHON, "benchmarks/training_peers/ddp_loop.py", *common)).stdout)[
            "samplesPerSecond"
        ]

    def lightning(round_: int) -> list[float]:
        if not BENCH_PYTHON.exists():
            raise SystemExit(f"{BENCH_PYTHON} is missing; set up .venv-bench as benchmarks/README.md says")
        return last_json(
            run(torchrun(BENCH_PYTHON, "benchmarks/training_peers/lightning_loop.py", *common)).stdout
        )["samplesPerSecond"]

    runners = {"conveyor": conveyor, "ddp": ddp, "lightning": lightning}
    raw: dict[str, list[list[float]]] = {name: [] for name in args.contenders}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for round_ in range(1, args.rounds + 1):
        for name in args.contenders:
            rates = runners[name](round_)
            raw[name].append(rates)
            print(
                f"round {round_} {name:9s} " + " ".join(f"{r:8.0f}" for r in rates),
                file=sys.stderr,
                flush=True,
            )
    medians = {name: statistics.median(statistics.median(r[1:]) for r in runs) for name, runs in raw.items()}
    summary = {
        "started": started,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "setup": {
            "model": sections["model"],
            "featureShape": meta.feature_shape,
            "trainRows": meta.sizes["train"],
            "batchSize": args.batch_size,
            "epochs": args.epochs,
            "processes": 2,
            "backend": "gloo",
        },
        "samplesPerSecond": medians,
        "raw": raw,
    }
    if "ddp" in medians and "conveyor" in medians:
        summary["conveyorVsDdp"] = medians["conveyor"] / medians["ddp"]
    if "lightning" in medians and "conveyor" in medians:
        summary["conveyorVsLightning"] = medians["conveyor"] / medians["lightning"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "overhead.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "raw"}, indent=1))


if __name__ == "__main__":
    main()

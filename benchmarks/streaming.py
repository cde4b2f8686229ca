"""Streaming: Conveyor's loop over a Parquet dataset 4x a memory budget vs a plain DataLoader (issue 10).

The target: a Parquet dataset at least 4x the memory budget trains with peak RSS per process <= 1 GB
and >= 0.9x the samples/s of a plain torch DataLoader over the same files.

1. Generate a raw Parquet source of `--budget-mib` x 4 bytes of float32 features (63 features + an
   int64 label that a linear rule of the features decides), written in chunks, never whole.
2. `python -m conveyor.trainer prepare` with CONVEYOR_IN_MEMORY_BYTES = the budget: the source is
   larger, so prepare streams it (one pass) into data/{train,validation,test}.parquet.
3. Side by side, interleaved round by round (alternating which goes first), each in its own process,
   over the same data/train.parquet, the same model (`build_model`, an MLP), optimizer (AdamW), batch
   size and DataLoader workers (`streaming.loader_workers(1)`), one intra-op thread each:
   - conveyor: `streaming.StreamingBatches` (epoch-seeded unit order, sharding, shuffle windows,
     normalisation and label encoding per batch) through `train.train_epoch`, Conveyor's training step;
   - plain:    an IterableDataset that reads the file's row groups with pyarrow (`iter_batches`), split
     across workers by row group, converted with `torch.from_numpy` (no shuffle, no normalisation:
     the least a hand-written loader does), through a plain zero_grad/backward/step loop.
   Each trains `--steps` batches of the epoch; samples/s is timed from the first batch (worker start-up
   excluded for both), and so are samples per CPU-second (main process + workers), the fairer number
   on a machine shared with other work. Peak RSS is sampled every 50 ms for each process (main and
   each worker).
4. Delete the generated data (unless --keep).

    .venv/bin/python benchmarks/streaming.py                       # 2 GiB of features, ~6-10 min here
    .venv/bin/python benchmarks/streaming.py --budget-mib 64 --steps 100 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "streaming"
FEATURES = 63
CHUNK_ROWS = 262_144


def generate(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=FEATURES).astype(np.float32)
    names = [f"f{i}" for i in range(FEATURES)]
    schema = pa.schema([*((n, pa.float32()) for n in names), ("label", pa.int64())])
    with pq.ParquetWriter(path, schema, use_dictionary=False, compression="none") as writer:
        for start in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - start)
            x = rng.standard_normal(size=(n, FEATURES), dtype=np.float32) * 3 + 1
            label = (x @ weights > weights.sum()).astype(np.int64)
            writer.write_table(
                pa.table({**{c: x[:, i] for i, c in enumerate(names)}, "label": label}, schema)
            )


def peak_rss(argv: list[str], env: dict[str, str]) -> tuple[list[int], str]:
    """Run `argv`; return each process's peak RSS in bytes (the main process first) and its stdout."""
    import psutil

    process = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    parent, peaks = psutil.Process(process.pid), dict[int, int]()
    while process.poll() is None:
        try:
            for proc in [parent, *parent.children(recursive=True)]:
                peaks[proc.pid] = max(peaks.get(proc.pid, 0), proc.memory_info().rss)
        except psutil.Error:
            pass  # a worker that just exited
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} ... failed:\n{stderr[-4000:]}")
    others = [v for k, v in peaks.items() if k != process.pid and v > 0]  # 0: sampled as a zombie
    return [peaks.get(process.pid, 0), *others], stdout


# --- the contenders (run in their own process: `--contender NAME`) -------------------------------


def cpu_seconds() -> float:
    """CPU time of this process and its live children (the DataLoader workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def timed(batches: Iterator[Any], steps: int, clock: dict[str, float]) -> Iterator[Any]:
    """The first `steps` batches; records the wall and CPU time from the first batch to the end and the
    samples trained in between."""
    clock["samples"] = 0
    for step, (x, y) in enumerate(itertools.islice(batches, steps)):
        if step == 0:
            clock["start"], clock["cpuStart"] = time.perf_counter(), cpu_seconds()
        else:
            clock["samples"] += len(y)  # the first batch's samples are before the clock started
        yield x, y
    clock["end"], clock["cpuEnd"] = time.perf_counter(), cpu_seconds()  # workers still alive here


def contender(name: str, data: Path, steps: int, batch_size: int) -> dict[str, float]:
    from conveyor.trainer import distributed, train
    from conveyor.trainer.artifacts import read_metadata
    from conveyor.trainer.config import TrainerConfig
    from conveyor.trainer.data import streaming
    from conveyor.trainer.models import build_model

    config = TrainerConfig.model_validate(
        {
            "model": {"architecture": "mlp"},
            "training": {"epochs": 1, "batchSize": batch_size},
            "optimizer": {"name": "adamw", "learningRate": 0.002, "weightDecay": 0.0},
        }
    )
    ctx = distributed.setup()
    meta = read_metadata(data)
    torch.manual_seed(0)
    model = build_model(config.model, meta)
    train.set_cpu_threads(model, ctx)
    workers = streaming.loader_workers(1)
    clock: dict[str, float] = {}
    if name == "conveyor":
        source = streaming.SplitFile(data, "train", meta)
        batches = streaming.StreamingBatches(source, batch_size, ctx, seed=0, augment=None, workers=workers)
        state = train.build_state(config, meta, model, batches.steps, torch.float32, ctx, time.perf_counter())
        loss_fn = train.make_loss(meta, 0.0)
        train.train_epoch(
            model,
            state,
            timed(batches.epoch(1), steps, clock),
            loss_fn,
            train.autocast_for(torch.float32, ctx.device),
            None,
            False,
        )
    else:
        optimizer = train.build_optimizer(config.optimizer, model)
        loader = DataLoader(
            PlainParquet(streaming.split_file(data, "train"), batch_size),
            batch_size=None,
            num_workers=workers,
        )
        model.train()
        for x, y in timed(iter(loader), steps, clock):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return {
        "samplesPerSecond": clock["samples"] / (clock["end"] - clock["start"]),
        "samplesPerCpuSecond": clock["samples"] / (clock["cpuEnd"] - clock["cpuStart"]),
        "workers": workers,
    }


class PlainParquet(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """What one writes by hand: each worker reads its share of the row groups, batch by batch."""

    def __init__(self, path: Path, batch_size: int) -> None:
        self.path, self.batch_size = path, batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        source = pq.ParquetFile(self.path)
        for group in range(worker, source.num_row_groups, workers):
            for batch in source.iter_batches(batch_size=self.batch_size, row_groups=[group]):
                column = batch.column("x")
                x = np.array(column.flatten().to_numpy().reshape(len(column), -1))
                yield torch.from_numpy(x), torch.from_numpy(batch.column("y").to_numpy())


# --- the run ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-mib", type=int, default=512, help="memory budget; the data is 4x this")
    parser.add_argument("--steps", type=int, default=600, help="training batches per contender run")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--contender", choices=["conveyor", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        print(json.dumps(contender(args.contender, args.data, args.steps, args.batch_size)))
        return

    budget = args.budget_mib << 20
    rows = -(-4 * budget // ((FEATURES + 1) * 4))
    root = Path(tempfile.mkdtemp(prefix="conveyor-streaming-"))
    if shutil.disk_usage(root).free < 3 * 4 * budget:
        raise SystemExit(f"{root}: needs {3 * 4 * budget >> 30} GiB free for the source and its splits")
    env = dict(os.environ, CONVEYOR_IN_MEMORY_BYTES=str(budget), CONVEYOR_TERMINATION_LOG="/nonexistent")
    env.pop("OMP_NUM_THREADS", None)
    python = [sys.executable]
    try:
        started = time.perf_counter()
        generate(root / "source.parquet", rows)
        generated = time.perf_counter() - started
        config = json.dumps(
            {"data": {"source": str(root / "source.parquet")}, "model": {"architecture": "mlp"}}
        )
        started = time.perf_counter()
        prepare_peaks, _ = peak_rss(
            [*python, "-m", "conveyor.trainer", "prepare", "--config", config, "--out", str(root / "data")],
            env,
        )
        prepared = time.perf_counter() - started
        meta = json.loads((root / "data" / "metadata.json").read_text())
        assert meta["storage"] == "parquet", meta
        runs: dict[str, list[dict[str, Any]]] = {"conveyor": [], "plain": []}
        for round_ in range(args.rounds):
            for name in sorted(runs, reverse=round_ % 2 == 1):  # each goes first every other round
                argv = [*python, __file__, "--contender", name, "--data", str(root / "data")]
                argv += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
                peaks, stdout = peak_rss(argv, env)
                result = json.loads(stdout.strip().splitlines()[-1])
                runs[name].append({**result, "peakRssMiB": [p >> 20 for p in peaks]})
        report = {
            "budgetMiB": args.budget_mib,
            "sourceRows": rows,
            "featureBytes": rows * (FEATURES + 1) * 4,
            "sourceFileBytes": (root / "source.parquet").stat().st_size,
            "trainRows": meta["sizes"]["train"],
            "generateSeconds": round(generated, 1),
            "prepareSeconds": round(prepared, 1),
            "preparePeakRssMiB": [p >> 20 for p in prepare_peaks],
            "steps": args.steps,
            "batchSize": args.batch_size,
            "loadAverage": os.getloadavg(),
            "runs": runs,
        }
        median = {n: statistics.median(r["samplesPerSecond"] for r in rs) for n, rs in runs.items()}
        report["medianSamplesPerSecond"] = median
        report["ratio"] = median["conveyor"] / median["plain"]
        per_cpu = {n: statistics.median(r["samplesPerCpuSecond"] for r in rs) for n, rs in runs.items()}
        report["medianSamplesPerCpuSecond"] = per_cpu
        report["cpuRatio"] = per_cpu["conveyor"] / per_cpu["plain"]
        report["maxPeakRssMiB"] = {n: max(max(r["peakRssMiB"]) for r in rs) for n, rs in runs.items()}
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "streaming.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

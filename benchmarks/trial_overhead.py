"""Per-trial overhead of `conveyor run`: cold processes (torchrun agents, fresh interpreters) vs warm
workers (forks of the fork server), side by side on the reference digits pipeline.

Each round starts `--parallel` digits trials at once through the local executor, as the tuner does
(the reference manifest's trial: CNN, 2 workers x 1 process on gloo, its resources and environment,
`--epochs` epochs each), once cold and once warm; modes alternate round by round so they share the
machine's conditions. While they run, the benchmark polls what the engine would see (every 10 ms) and
the trainer's own clock (`elapsedSeconds` of its epoch events, `durationSeconds` of its result):

- launch -> first batch: from `executor.start` until the first training step, i.e. until the trainer's
  clock started, plus what its first epoch spent outside training steps (rendezvous, loading the data,
  building the model, the first validation): an upper bound;
- last epoch -> result: from the last epoch's event until the executor reports the result;
- overhead: launch -> result observed, minus the trainer's own duration;
- exit: result observed -> every process gone (teardown; CPU the next trial competes with).

The warm mode's fork server starts once per `conveyor run`; its start-up is reported on its own.
The machine's load average is recorded with every round. Raw numbers: benchmarks/out/trial_overhead.json.

    .venv/bin/python benchmarks/trial_overhead.py                     # 3 rounds x 3 parallel trials
    .venv/bin/python benchmarks/trial_overhead.py --rounds 5 --parallel 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conveyor.operator.api.resource import load_manifest
from conveyor.operator.executors.local import LocalExecutor
from conveyor.operator.workloads import Workload
from conveyor.trainer import progress
from conveyor.trainer.artifacts import workload_dir
from conveyor.trainer.data.prepare import load_split

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "manifests" / "examples" / "digits.yaml"
OUT = REPO / "benchmarks" / "out" / "trial_overhead.json"
POLL_SECONDS = 0.01


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def trial(spec: Any, number: int, epochs: int) -> Workload:
    """Trial `number` as the engine starts it for the reference manifest (`engine.workload_kinds`)."""
    name = f"trial-{number:04d}"
    res = spec.resources
    params = {"training.epochs": epochs, "training.earlyStopping.patience": epochs}
    return Workload(
        name,
        "tune",
        "train",
        workload_dir(name),
        config=spec.trainer_config(params).to_wire(),
        trial=number,
        params=params,
        distributed=True,
        workers=res.workers,
        processes_per_worker=res.processes_per_worker,
        cpu=res.cpu,
        memory=res.memory,
    )


def prepare(executor: LocalExecutor, spec: Any) -> None:
    workload = Workload(
        "prepare", "prepare", "prepare", workload_dir("prepare"), config=spec.trainer_config().to_wire()
    )
    executor.start(workload)
    while (seen := executor.observe([("prepare", 0)], serving=False).workloads["prepare"]).state == "running":
        time.sleep(0.05)
    if seen.state != "succeeded":
        raise SystemExit(f"prepare failed: {seen.message}")


def run_round(
    executor: LocalExecutor, spec: Any, first: int, parallel: int, epochs: int, train_rows: int
) -> list[dict[str, Any]]:
    """`parallel` trials started together; per trial the times it took, as seen from outside."""
    workloads = [trial(spec, first + i, epochs) for i in range(parallel)]
    times: dict[str, dict[str, float]] = {w.name: {} for w in workloads}
    for workload in workloads:
        times[workload.name]["launch"] = time.monotonic()
        executor.start(workload)
    pending = {w.name for w in workloads}
    deadline = time.monotonic() + 600
    while pending and time.monotonic() < deadline:
        seen = executor.observe(
            [(w.name, 0) for w in workloads if w.name in pending], serving=False
        ).workloads
        now = time.monotonic()
        for name, observation in seen.items():
            mark = times[name]
            epochs_seen = len(observation.epochs)
            if epochs_seen and "first_epoch" not in mark:
                mark["first_epoch"] = now
            if epochs_seen >= epochs and "last_epoch" not in mark:
                mark["last_epoch"] = now
            if observation.result is not None and "result" not in mark:
                mark["result"] = now
            if observation.state != "running":
                if observation.state != "succeeded":
                    raise SystemExit(f"{name} {observation.state}: {observation.message}")
                mark["exit"] = now
                pending.discard(name)
        time.sleep(POLL_SECONDS)
    if pending:
        raise SystemExit(f"trials {sorted(pending)} did not finish")
    rows = []
    for workload in workloads:
        mark = times[workload.name]
        out = executor.root / workload.out
        events = [e for e in progress.read_events(out) if e.get("event") == "epoch"]
        result = progress.read_result(out) or {}
        first = events[0]
        world = workload.world_size
        first_train = (train_rows // world) * world / first["samplesPerSecond"]  # its steps alone
        clock_start = mark["first_epoch"] - first["elapsedSeconds"]
        duration = float(result["durationSeconds"])
        rows.append(
            {
                "trial": workload.name,
                "launchToTrainerClock": clock_start - mark["launch"],
                "launchToFirstBatch": clock_start - mark["launch"] + first["elapsedSeconds"] - first_train,
                "lastEpochToResult": mark["result"] - mark["last_epoch"],
                "overhead": mark["result"] - mark["launch"] - duration,
                "exit": mark["exit"] - mark["result"],
                "launchToResult": mark["result"] - mark["launch"],
                "trainerSeconds": duration,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--parallel", type=int, default=3, help="trials started together (the manifest's parallelism)"
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per trial (a pruned trial trains about 3)"
    )
    parser.add_argument("--modes", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    args = parser.parse_args()

    spec = load_manifest(MANIFEST)[0].spec
    report: dict[str, Any] = {"args": vars(args), "cpus": os.cpu_count(), "rounds": []}
    with tempfile.TemporaryDirectory(prefix="conveyor-trial-overhead-") as tmp:
        executors = {
            mode: LocalExecutor(Path(tmp) / mode, python=sys.executable, warm=mode == "warm")
            for mode in args.modes
        }
        try:
            if "warm" in executors:
                started = time.monotonic()
                executors["warm"].fork_server().ensure_started()
                report["forkServerReadySeconds"] = time.monotonic() - started
            for executor in executors.values():
                prepare(executor, spec)
            train_rows = load_split(Path(tmp) / args.modes[0] / workload_dir("prepare"), "train")[0].shape[0]
            number = 0
            for round_ in range(args.rounds):
                for mode in args.modes if round_ % 2 == 0 else reversed(args.modes):
                    before = load()
                    rows = run_round(executors[mode], spec, number, args.parallel, args.epochs, train_rows)
                    number += args.parallel
                    report["rounds"].append(
                        {"round": round_, "mode": mode, "load": f"{before} -> {load()}", "trials": rows}
                    )
                    print(
                        f"round {round_} {mode:4s} load {before} -> {load()}: overhead "
                        + ", ".join(f"{r['overhead']:.2f}" for r in rows),
                        flush=True,
                    )
        finally:
            for executor in executors.values():
                executor.shutdown()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))

    keys = ["launchToFirstBatch", "lastEpochToResult", "overhead", "exit", "launchToResult", "trainerSeconds"]
    shape = f"{args.rounds} rounds x {args.parallel} parallel trials of {args.epochs} epochs"
    print(f"\nmedian over {shape} (seconds)")
    print("| mode | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for mode in args.modes:
        rows = [r for entry in report["rounds"] if entry["mode"] == mode for r in entry["trials"]]
        print(
            f"| {mode} | " + " | ".join(f"{statistics.median(r[k] for r in rows):.2f}" for k in keys) + " |"
        )
    if "forkServerReadySeconds" in report:
        print(f"fork server ready after {report['forkServerReadySeconds']:.2f} s (once per conveyor run)")


if __name__ == "__main__":
    main()

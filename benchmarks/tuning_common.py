"""What the tuning benchmarks share: a TrainingPipeline run for real through `conveyor run`'s engine.

`tuning_efficiency.py` and `tuning_decidable.py` both compare sweeps by what they cost (trial-epochs,
wall-clock) and what they give (the best validation value, and the final model's test metric). Both
measure it the same way, here: the manifest goes through `LocalRun` (engine, local executor, warm
workers) until the tuning stage is done, or on to the final training and its evaluation on the test
split; the clock of the tuning stage is taken the moment the engine marks it done.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conveyor.operator.api.resource import load_manifest
from conveyor.operator.api.status import PipelineStatus
from conveyor.operator.localrun import LocalRun
from conveyor.trainer import progress
from conveyor.trainer.artifacts import workload_dir


def tuned(status: PipelineStatus) -> bool:
    """Whether the tuning stage is done (or the whole pipeline is)."""
    stage = status.stages.tune
    return status.phase in ("Failed", "Succeeded") or (stage is not None and stage.state == "Succeeded")


def finished(status: PipelineStatus) -> bool:
    return status.phase in ("Failed", "Succeeded")


def trained_epochs(root: Path, workload: str) -> int:
    """The epochs a workload trained to their end: its epoch events, whether the tuner saw them or not."""
    return sum(e.get("event") == "epoch" for e in progress.read_events(root / workload_dir(workload)))


def run_pipeline(manifest: str, workdir: Path, test: bool = False) -> dict[str, Any]:
    """Run `manifest` in `workdir` until the tuning stage is done, or with `test` until the pipeline
    is (final training with the best trial's parameters, evaluated on the test split).

    Returned: `best` (best trial value), `test` (the final model's test value of the objective metric,
    None without `test`), `trialEpochs` (epochs reported to the tuner, summed over trials),
    `trainedEpochs` (epochs trained to their end, from the trials' progress files: more than reported
    where a pruned trial trained on while its stop travelled), `pruned`, `tuneSeconds`
    (start to the tuning stage done, preparing the data included), `seconds` (start to the end),
    `phase`, `message` and every trial's parameters and per-epoch values."""
    pipeline = load_manifest(manifest)[0]
    metric = pipeline.spec.task.metric
    run = LocalRun.create(pipeline, workdir, serve=False)
    started = time.monotonic()
    marks: dict[str, float] = {}

    def until(status: PipelineStatus) -> bool:
        if "tune" not in marks and tuned(status):
            marks["tune"] = time.monotonic() - started
        return finished(status) if test else tuned(status)

    try:
        status = run.run(until=until)
    finally:
        run.shutdown()
    values = [t.value for t in status.trials if t.value is not None]
    model = status.evaluation.model if status.evaluation else None
    return {
        "best": (max if pipeline.spec.task.maximize else min)(values) if values else None,
        "test": (model or {}).get(metric),
        "trialEpochs": sum(len(t.values) for t in status.trials),
        "trainedEpochs": sum(trained_epochs(run.root, t.name) for t in status.trials),
        "pruned": sum(t.state == "Pruned" for t in status.trials),
        "tuneSeconds": round(marks.get("tune", time.monotonic() - started), 2),
        "seconds": round(time.monotonic() - started, 2),
        "phase": status.phase,
        "message": status.message if status.phase == "Failed" else None,
        "trials": [
            {
                "number": t.number,
                "state": t.state,
                "reason": t.reason,
                "message": t.message,
                "params": t.params,
                "value": t.value,
                "values": t.values,
            }
            for t in status.trials
        ],
    }

"""How long one engine reconcile takes over a study at the 500-trial limit, and how large its status is.

Moved out of the unit tests (which assert only what the reconcile decides): 500 trials of 30 epochs,
three parameters, ASHA rung attributes, 499 succeeded and one running. Each reconcile rebuilds the
Optuna study from status, checks pruning, ranks the trials and picks the best; the status must stay
well under etcd's 1.5 MiB object limit.

    .venv/bin/python benchmarks/engine_reconcile.py --repeat 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from conveyor.operator.api.resource import parse
from conveyor.operator.api.spec import TrainingPipelineSpec
from conveyor.operator.api.status import PipelineStatus, TrialStatus
from conveyor.operator.engine import Observations, WorkloadObservation, reconcile

REFERENCE = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "digits.yaml"
T0 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
TRIALS = 500


def tuning_status(document: dict[str, Any]) -> tuple[TrainingPipelineSpec, PipelineStatus]:
    """The spec and a status in the tuning stage with TRIALS finished-but-one trials."""
    spec = parse(document).spec
    prepared = Observations({"prepare": WorkloadObservation("succeeded", result={"status": "succeeded"})})
    status = reconcile(spec, reconcile(spec, None, Observations(), T0).status, prepared, T0).status
    status.trials = [
        TrialStatus(
            name=f"trial-{n:04d}",
            number=n,
            state="Succeeded" if n < TRIALS - 1 else "Running",
            values=[round(0.5 + 0.015 * e + 0.0001 * n, 6) for e in range(30)],
            value=round(0.5 + 0.015 * 29 + 0.0001 * n, 6),
            params={
                "optimizer.learningRate": 0.001 + n * 1e-5,
                "training.batchSize": 64,
                "model.dropout": 0.1 + n * 1e-4,
            },
            attrs={
                "completed_rung_0": 0.5,
                "completed_rung_1": 0.6,
                "completed_rung_2": 0.7,
                "conveyor:checked": 30,
            },
            start_time="2026-11-23T06:00:00Z",
            completion_time="2026-11-23T06:00:00Z",
            duration_seconds=42.0,
        )
        for n in range(TRIALS)
    ]
    return spec, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    document = yaml.safe_load(REFERENCE.read_text())
    document["spec"]["tuning"].update({"trials": TRIALS, "parallelism": 10, "pruner": "asha"})
    spec, status = tuning_status(document)
    seconds = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        decision = reconcile(spec, status, Observations(), T0)
        seconds.append(time.perf_counter() - started)
    assert decision.status.best_trial is not None
    print(
        json.dumps(
            {
                "trials": TRIALS,
                "status_bytes": len(json.dumps(status.to_wire())),
                "reconcile_seconds_median": round(statistics.median(seconds), 4),
                "reconcile_seconds_max": round(max(seconds), 4),
                "best_trial": decision.status.best_trial.name,
            }
        )
    )


if __name__ == "__main__":
    main()

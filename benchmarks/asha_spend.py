"""What an ASHA rule spends on a given sweep before any search: the schedule alone, simulated.

`tuning_decidable.py` measures what each stopping rule spends on digits (9 trials x 9 epochs, rungs 1
and 3) and on the synthetic task (27 x 27, rungs 1, 3 and 9), but each sweep's spend moves with the
search and with timing (the same 16 digits seeds spent 33.8 and 31.5 trial-epochs in two runs). How
much of it is the rule itself? Here the engine's own pruner (`tuning.make_pruner` on the benchmark's
manifest, the default `asha.Asha`) and the benchmark's other two rules (`tuning_decidable.OneRule`:
Ray Tune's rule or Optuna's top third at every rung) judge sweeps of those shapes, and of the
reference pipeline's own (digits, 12 trials x 30 epochs, rungs 1, 3 and 9), whose trials carry no
search at all:

- `--parallelism` trials at a time, each epoch of a trial taking 1 to 1.2 time units (drawn per trial,
  so trials started together reach a rung in a random order, as on a real machine), and a trial
  waiting at each rung for its verdict (as Conveyor's local trials do since `tuning.verdict_epochs`);
- a trial's value at a rung is its quality plus noise: quality drawn at random, N(`--trend` x its
  number, 1), rung noise N(0, 0.5). `--trend 0`: the search learns nothing, every order of trials is
  equally likely; a positive trend: later trials are better, as a search that learns makes them.

Reported per task and rule: trial-epochs as a share of random search's (every trial trains every
epoch), mean +- standard error over `--sweeps` simulated sweeps, and the trials trained to the end.
Compare with what `tuning_decidable.py` measured for real (RESULTS.md): if they agree, what a rule
spends on a sweep of that shape is set by the schedule, and a spend target is a target on the rule.

    .venv/bin/python benchmarks/asha_spend.py                     # both tasks, 2,000 sweeps each, ~1 min
    .venv/bin/python benchmarks/asha_spend.py --trend 0.1 --sweeps 500
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from conveyor.operator.engine import asha, tuning
from tuning_decidable import DEFAULT, OPTUNA_RULE, RAY_RULE, OneRule, parse_spec, task_manifest

# (task, trials, epochs): tuning_decidable's recorded runs, and the reference pipeline's own sweep
# (manifests/examples/digits.yaml, README command 1)
SHAPES = [("digits", 9, 9), ("digits", 12, 30), ("synthetic", 27, 27)]
RULES = [DEFAULT, RAY_RULE, OPTUNA_RULE]
RUNG_NOISE = 0.5


@dataclass(frozen=True)
class Sweep:
    trials: int
    epochs: int
    parallelism: int
    trend: float


def make_rule(task: str, sweep: Sweep, rule: str) -> asha.Asha:
    """The engine's ASHA for the benchmark's manifest of this shape, or the same rungs under `rule`."""
    args = argparse.Namespace(
        trials=sweep.trials, epochs=sweep.epochs, parallelism=sweep.parallelism, workers=1
    )
    spec = parse_spec(task_manifest(task, args))
    assert spec.tuning is not None and spec.tuning.pruner == "asha"
    pruner = tuning.make_pruner(spec.tuning, tuning.resource(spec))
    assert isinstance(pruner, asha.Asha)
    return pruner if rule == DEFAULT else OneRule(pruner, rule)


def simulate(sweep: Sweep, pruner: asha.Asha, rng: random.Random) -> tuple[int, int]:
    """One sweep: (trial-epochs, trials trained to the end)."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    rungs = pruner.rungs()
    quality = [rng.gauss(sweep.trend * n, 1.0) for n in range(sweep.trials)]
    arrivals: list[tuple[float, int, int]] = []  # (time, trial number, rung index)
    running: dict[int, tuple[optuna.Trial, float, float]] = {}  # number -> (trial, start, epoch time)
    started = spent = finished = 0

    def start(now: float) -> None:
        nonlocal started
        if started < sweep.trials:
            epoch = 1.0 + 0.2 * rng.random()
            running[started] = (study.ask(), now, epoch)
            heapq.heappush(arrivals, (now + rungs[0] * epoch, started, 0))
            started += 1

    for _ in range(sweep.parallelism):
        start(0.0)
    while arrivals:
        now, number, index = heapq.heappop(arrivals)
        trial, began, epoch = running[number]
        trial.report(quality[number] + rng.gauss(0.0, RUNG_NOISE), rungs[index])
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            spent += rungs[index]
        elif index + 1 < len(rungs):
            heapq.heappush(arrivals, (began + rungs[index + 1] * epoch, number, index + 1))
            continue
        else:
            study.tell(trial, quality[number])
            spent += sweep.epochs
            finished += 1
            now = began + sweep.epochs * epoch
        del running[number]
        start(now)
    return spent, finished


def measure(task: str, sweep: Sweep, rule: str, sweeps: int, seed: int) -> dict[str, Any]:
    pruner = make_rule(task, sweep, rule)
    rng = random.Random(seed)
    runs = [simulate(sweep, pruner, rng) for _ in range(sweeps)]
    share = [100.0 * spent / (sweep.trials * sweep.epochs) for spent, _ in runs]
    return {
        "rungs": pruner.rungs(),
        "spendPercent": statistics.fmean(share),
        "standardError": statistics.stdev(share) / len(share) ** 0.5,
        "trainedToTheEnd": statistics.fmean(done for _, done in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks", nargs="+", choices=["digits", "synthetic"], default=["digits", "synthetic"]
    )
    parser.add_argument("--sweeps", type=int, default=2000, help="simulated sweeps per task and rule")
    parser.add_argument("--parallelism", type=int, default=3)
    parser.add_argument("--trend", type=float, default=0.0, help="how much better each later trial is, in sd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "asha_spend.json")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    results = []
    print("| task | rule | rungs | trial-epochs, % of random's | trials trained to the end |")
    print("| --- | --- | --- | --- | --- |")
    for task, trials, epochs in [shape for shape in SHAPES if shape[0] in args.tasks]:
        sweep = Sweep(trials, epochs, parallelism=args.parallelism, trend=args.trend)
        for rule in RULES:
            result = {
                "task": task,
                "trials": trials,
                "epochs": epochs,
                "rule": rule,
                **measure(task, sweep, rule, args.sweeps, args.seed),
            }
            results.append(result)
            print(
                f"| {task} ({sweep.trials} x {sweep.epochs}) | {rule} | {result['rungs']} | "
                f"{result['spendPercent']:.1f} +- {result['standardError']:.1f} | "
                f"{result['trainedToTheEnd']:.1f} |",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": {**vars(args), "out": str(args.out)}, "results": results}, indent=1)
    )


if __name__ == "__main__":
    main()

"""TPE + ASHA searches on issue 13's synthetic task replayed in one process: real training, a simulated clock.

`tuning_decidable.py` runs the real arms, but a Ray sweep takes minutes, and which trials ASHA stops
depends on which trial reaches a rung first, i.e. on machine load. Asking why one search beats another
needs many seeds and variants with everything else held still. Here each study is Conveyor's own
`tuning.Study` (rebuilt from trial records for every ask and every pruning check, as the engine does),
each trial Conveyor's data arrays, model, optimizer and training step (as in `tuning_decidable`'s Ray
trial), trained epoch by epoch in this process, and time is simulated: `--parallelism` trials at a time
(default 3) of `--trials` (default 9, `tuning_decidable`'s budget), `--epochs` each (default 9), a
trial's start costing `--start-cost` units (default 2; a Ray Tune trial's start is ~20) and each of
its epochs 1 + (its MLP's weights / 30,000), so small models reach rungs first as they do for real.
Each trial keeps its own random state, so its curve does not depend on what ran beside it, and a study
of 9 trials takes ~5-30 s on one core (time grows with its trial-epochs: ~0.2-0.4 s each, so a random
study of 27 trials, 243 of them, took 47-94 s here).

Variants (`--variants`):
- `conveyor`: Conveyor's default as it is (TPE told of pruned and running trials by their values,
  `tuning.sampler_view`; ASHA's first rung a 27th of the epochs, at least 1, `tuning.asha_first_rung`;
  Ray's ASHA rule before the last rung, `asha.Asha`; runs saved before those changes had none of them:
  running trials as the liar's worst, a tenth of the epochs, rungs 3 and 9 at 27 epochs, Optuna's top
  third at every rung);
- `conveyor, pruned unseen`: as it was before (TPE told of pruned trials as pruned);
- `ray-like`: what the Ray Tune arm does differently: one `TPESampler(seed)` drawing every trial from
  one stream (other start-up trials than Conveyor's for the same seed), Ray's `ASHAScheduler` rule
  (continue if at least the 2/3 quantile of the values recorded at the rung so far), TPE told of stopped
  trials as completed, and the best configuration chosen over every reported epoch of any trial;
- `ray-like, conveyor draws`: the same with Conveyor's per-trial draws
  (`tuning_decidable.SameDraws`);
- `random, no pruning`: Conveyor's random search without early stopping (Katib's default), i.e.
  `tuning_decidable`'s arm "conveyor random, no pruning" (`algorithm: random`, `pruner: none`), replayed
  as `conveyor` is (the same `tuning.Study` path, trial n drawn from the stream seeded by (seed, n)),
  every trial training all epochs: whether the default beats it, and how that changes with the budget.
  TPE's start-up trials come from the same per-trial streams, so for a seed both share their first
  trials (each TPE ask before `tuning.startup_trials` trials have finished is random) and differ after.
- `conveyor, first rung at epoch 1`: `conveyor` with `warmupEpochs: 1` (`tuning_decidable`'s arm of
  that name): floor(log3(epochs / 3)) + 1 rungs (1, 3, 9 of 27 epochs), where a tenth of the epochs
  always left ASHA two; the default's rungs from 27 to 53 epochs; Ray's rungs follow the warm-up too;
- `conveyor, ray's asha rule, first rung at epoch 1`: the same, stopping trials by Ray's ASHA rule at
  every rung (as `ray-like`) instead of the default's, everything else Conveyor's;
- `conveyor, running trials as liars`: `conveyor` as it was before TPE was told of running trials by
  their reports (`tuning.sampler_view`): the constant liar's worst, as Optuna has it.

Reported per variant: the best configuration's validation accuracy (what the final training then
retrains; not the test metric: mean and sd over seeds) and trial-epochs, and per seed the difference
from the first variant (mean +- standard error, in validation samples).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tuning_replay.py --seeds 0 1 2 3 4 5 6 7 \\
        --variants conveyor "conveyor, pruned unseen" ray-like
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tuning_replay.py --seeds $(seq 0 15) --trials 27 \\
        --variants conveyor "random, no pruning" --out benchmarks/out/tuning_replay_27.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

import tuning_decidable as td
from conveyor.operator.api.spec import TuningSpec
from conveyor.operator.api.status import TrialStatus
from conveyor.operator.engine import asha, tuning
from conveyor.trainer import distributed
from conveyor.trainer import train as conveyor_train
from conveyor.trainer.artifacts import read_metadata
from conveyor.trainer.config import TrainerConfig, with_overrides
from conveyor.trainer.models import build_model

RANDOM = "random, no pruning"
FIRST_RUNG_1 = "conveyor, first rung at epoch 1"
RAY_RULE_1 = "conveyor, ray's asha rule, first rung at epoch 1"
RUNNING_LIARS = "conveyor, running trials as liars"
VARIANTS = [
    "conveyor",
    "conveyor, pruned unseen",
    "ray-like",
    "ray-like, conveyor draws",
    RANDOM,
    FIRST_RUNG_1,
    RAY_RULE_1,
    RUNNING_LIARS,
]
# The TuningSpec each variant starts from: `tuning_decidable`'s arm of that name (the default's otherwise).
ARM_OF = {RANDOM: td.RANDOM, FIRST_RUNG_1: td.FIRST_RUNG_1, RAY_RULE_1: td.FIRST_RUNG_1}
ARMS = {v: td.CONVEYOR_ARMS[ARM_OF.get(v, td.DEFAULT)] for v in VARIANTS}
START_COST = 2.0
CPU = distributed.Context(0, 1, 0, torch.device("cpu"), "gloo")


class Trial:
    """One trial's training, an epoch per `step`, with its own random state."""

    def __init__(self, base: TrainerConfig, data: Path, params: dict[str, Any]) -> None:
        config = with_overrides(base, params)
        training = config.training
        meta = read_metadata(data)
        with torch.random.fork_rng():
            torch.manual_seed(training.seed)
            self.batches, self.validation = conveyor_train.load_data(config, meta, data, CPU)
            self.model = build_model(config.model, meta)
            dtype = conveyor_train.precision_dtype(training.precision, CPU.device)
            self.state = conveyor_train.build_state(
                config, meta, self.model, self.batches.steps, dtype, CPU, time.perf_counter()
            )
            self.rng = torch.get_rng_state()
        self.autocast = conveyor_train.autocast_for(dtype, CPU.device)
        self.loss = conveyor_train.make_loss(meta, training.label_smoothing)
        self.clipping = training.gradient_clipping
        self.metric = config.task.metric
        self.epoch = 0
        weights = sum(p.numel() for p in self.model.parameters())
        self.cost = 1 + weights / 30000

    def step(self) -> float:
        self.epoch += 1
        with torch.random.fork_rng():
            torch.set_rng_state(self.rng)
            conveyor_train.train_epoch(
                self.model,
                self.state,
                self.batches.epoch(self.epoch),
                self.loss,
                self.autocast,
                self.clipping,
                False,
            )
            value = self.validation(self.model, self.loss, self.autocast)[self.metric]
            self.rng = torch.get_rng_state()
        return float(value)


def ray_asha_stops(rungs: dict[int, dict[int, float]], number: int, epoch: int, value: float) -> bool:
    """Ray's ASHAScheduler (one bracket): at the first rung a trial reaches that it has not been
    recorded at, stop it if below the 2/3 quantile of the values recorded there before it."""
    for milestone in sorted(rungs, reverse=True):
        recorded = rungs[milestone]
        if epoch >= milestone and number in recorded:
            return False
        if epoch < milestone:
            continue
        stop = asha.below_ray_cutoff(value, list(recorded.values()))
        recorded[number] = value
        return stop
    return False


@contextmanager
def variant_of_conveyor(variant: str, spec: TuningSpec) -> Iterator[None]:
    """Conveyor's tuning module as `variant` has it (restored afterwards)."""
    make_sampler, sampler_view = tuning.make_sampler, tuning.sampler_view
    if variant == "conveyor, pruned unseen":
        tuning.sampler_view = lambda state, value, intermediate, maximize: (state, value)
    elif variant == RUNNING_LIARS:
        tuning.sampler_view = lambda state, value, intermediate, maximize: (
            (state, value)
            if state == TrialState.RUNNING
            else sampler_view(state, value, intermediate, maximize)
        )
    elif variant == "ray-like":
        one = optuna.samplers.TPESampler(
            seed=spec.seed, n_startup_trials=tuning.startup_trials(spec), constant_liar=True
        )
        tuning.make_sampler = lambda *_: one
    elif variant == "ray-like, conveyor draws":
        one = td.SameDraws(spec)
        tuning.make_sampler = lambda *_: one
    try:
        yield
    finally:
        tuning.make_sampler, tuning.sampler_view = make_sampler, sampler_view


def study(
    variant: str,
    spec: TuningSpec,
    base: TrainerConfig,
    data: Path,
    epochs: int,
    start_cost: float = START_COST,
) -> dict[str, Any]:
    """One search to the end on the simulated clock; its best validation value and trial-epochs."""
    ray_like = variant.startswith("ray-like")
    ray_rule = ray_like or variant == RAY_RULE_1
    records: list[TrialStatus] = []
    live: dict[int, Trial] = {}
    ready: dict[int, float] = {}  # trial number -> time its next epoch is done
    first, factor = tuning.warmup_epochs(spec, epochs), asha.REDUCTION_FACTOR
    # Ray's rungs: the grace period times powers of the factor (one at the last epoch stops nothing)
    rungs: dict[int, dict[int, float]] = {
        first * factor**k: {} for k in range(epochs) if first * factor**k < epochs
    }
    now = 0.0

    def ask() -> None:
        while len(live) < spec.parallelism and len(records) < spec.trials:
            number = len(records)
            params, attrs, _ = tuning.Study(spec, records, True, epochs).ask(number)
            records.append(
                TrialStatus(
                    name=f"trial-{number}", number=number, params=params, attrs=attrs or None, state="Running"
                )
            )
            live[number] = Trial(base, data, params)
            ready[number] = now + start_cost + live[number].cost

    with variant_of_conveyor(variant, spec):
        ask()
        while ready:
            number = min(ready, key=lambda n: (ready[n], n))
            now = ready.pop(number)
            record, trial = records[number], live[number]
            value = trial.step()
            record.values = [*record.values, value]
            if ray_rule:
                stop = ray_asha_stops(rungs, number, trial.epoch, value)
            else:
                stop = tuning.Study(spec, records, True, epochs).check_pruning(record) is not None
            if stop:
                record.state = "Pruned"
            elif trial.epoch >= epochs:
                record.state = "Succeeded"
                record.value = max(v for v in record.values if v is not None)
            else:
                ready[number] = now + trial.cost
            if record.state != "Running":
                del live[number]
                ask()
    values = [[v for v in r.values if v is not None] for r in records]
    if ray_like:  # Ray's `get_best_result(scope="all")`: any reported epoch of any trial
        best = max(max(v) for v in values)
    else:  # Conveyor: the best succeeded trial
        best = max(r.value for r in records if r.state == "Succeeded" and r.value is not None)
    return {
        "best": best,
        "trialEpochs": sum(len(v) for v in values),
        "trials": [
            {"state": r.state, "params": r.params, "values": [round(v, 4) for v in v_]}
            for r, v_ in zip(records, values, strict=True)
        ],
    }


def summarise(results: dict[str, list[dict[str, Any]]], validation_rows: int) -> None:
    first = next(iter(results))

    def epochs(outcomes: list[dict[str, Any]]) -> float:
        return statistics.mean(o["trialEpochs"] for o in outcomes)

    print(
        "\n| variant | best validation: mean | sd | trial-epochs (mean, % of first) "
        "| per seed vs first, samples |"
    )
    print("| --- | --- | --- | --- | --- |")
    for variant, outcomes in results.items():
        best = [o["best"] for o in outcomes]
        diffs = [
            (o["best"] - f["best"]) * validation_rows for o, f in zip(outcomes, results[first], strict=True)
        ]
        error = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
        paired = (
            f"{statistics.mean(diffs):+.0f} +- {error:.0f} (wins {sum(d > 0 for d in diffs)}, ties "
            f"{sum(d == 0 for d in diffs)}, losses {sum(d < 0 for d in diffs)})"
            if variant != first
            else ""
        )
        spread = statistics.stdev(best) if len(best) > 1 else 0.0
        print(
            f"| {variant} | {statistics.mean(best):.4f} | {spread:.4f} "
            f"| {epochs(outcomes):.1f} ({epochs(outcomes) / epochs(results[first]):.0%}) | {paired} |"
        )


def report(paths: list[Path]) -> None:
    """One table over several saved runs of the same shape: disjoint seeds run side by side, or other
    variants run later over the same seeds (a study is deterministic, so it pairs with the earlier ones).
    When the runs differ in `--start-cost`, each variant is named with its run's. Variants are those
    every seed has, in the order first seen."""
    runs = [json.loads(path.read_text()) for path in paths]
    shapes = {(r["trials"], r["parallelism"], r["epochs"], r["validationRows"]) for r in runs}
    if len(shapes) != 1:
        raise SystemExit(f"the runs differ in (trials, parallelism, epochs, validation rows): {shapes}")
    costs = {r.get("startCost", START_COST) for r in runs}
    by_seed: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        cost = run.get("startCost", START_COST)
        for variant, outcomes in run["results"].items():
            name = f"{variant} (start cost {cost:g})" if len(costs) > 1 else variant
            by_seed.setdefault(name, {}).update({o["seed"]: o for o in outcomes})
    seeds = sorted({seed for outcomes in by_seed.values() for seed in outcomes})
    complete = {v: outcomes for v, outcomes in by_seed.items() if set(outcomes) == set(seeds)}
    results = {v: [outcomes[seed] for seed in seeds] for v, outcomes in complete.items()}
    trials, parallelism, epochs, rows = shapes.pop()
    print(f"configuration: {trials} trials, {parallelism} at a time, {epochs} epochs, seeds {seeds}")
    summarise(results, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS[:3])
    parser.add_argument("--trials", type=int, default=9, help="trials per study (default: 9)")
    parser.add_argument("--parallelism", type=int, default=3, help="trials at a time (default: 3)")
    parser.add_argument("--epochs", type=int, default=9, help="epochs per trial (default: 9)")
    parser.add_argument(
        "--start-cost",
        type=float,
        default=START_COST,
        help=f"a trial's start in simulated units, an epoch being ~1 (default: {START_COST:g}, Conveyor's "
        "fork server; a Ray Tune trial starts in ~20 epochs' time)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "tuning_replay.json")
    parser.add_argument(
        "--report", type=Path, nargs="+", help="print the table of saved runs (their --out files) and exit"
    )
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return
    if min(args.trials, args.parallelism, args.epochs) < 1:
        parser.error("--trials, --parallelism and --epochs must be at least 1")
    if args.parallelism > args.trials:
        parser.error(f"--parallelism {args.parallelism} is more than --trials {args.trials}; lower it")
    torch.set_num_threads(1)
    shape = argparse.Namespace(
        trials=args.trials, parallelism=args.parallelism, epochs=args.epochs, workers=1
    )
    doc = td.task_manifest("synthetic", shape)
    base = td.parse_spec(doc).trainer_config()
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory(prefix="conveyor-replay-") as tmp:
        data = Path(tmp)
        sizes = td.prepare_data(doc, data)
        for seed in args.seeds:
            for variant in args.variants:
                spec = td.parse_spec(yaml.safe_load(td.with_arm(doc, ARMS[variant], seed))).tuning
                assert spec is not None
                began = time.monotonic()
                outcome = study(variant, spec, base, data, shape.epochs, args.start_cost)
                results[variant].append({"seed": seed, **outcome})
                print(
                    json.dumps(
                        {
                            "seed": seed,
                            "variant": variant,
                            "best": outcome["best"],
                            "trialEpochs": outcome["trialEpochs"],
                        }
                    ),
                    f"{time.monotonic() - began:.1f} s",
                    flush=True,
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                saved = {
                    "seeds": args.seeds,
                    **vars(shape),
                    "startCost": args.start_cost,
                    "validationRows": sizes["validation"],
                    "results": results,
                }
                args.out.write_text(json.dumps(saved, indent=1) + "\n")
    print(
        f"\nconfiguration: {shape.trials} trials, {shape.parallelism} at a time, {shape.epochs} epochs, "
        f"seeds {args.seeds}; one validation sample = {1 / sizes['validation']:.5f}"
    )
    summarise(results, sizes["validation"])
    print(f"\nevery trial's parameters and per-epoch values: {args.out}")


if __name__ == "__main__":
    main()

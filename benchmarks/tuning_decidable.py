"""A tuning comparison that can decide: Conveyor's searches and Ray Tune, on digits and a 3,000-row split.

`tuning_efficiency.py` compared TPE + ASHA with random search on digits, whose 270-image validation
split makes the arms differ by one image or none. This benchmark adds a task where one sample is
below 0.1% of each split — `builtin://synthetic` (scikit-learn's `make_classification`), 20,000 rows,
3,000 each for validation and test — with a search space where learning rate, width, depth, dropout
and weight decay all matter (the spread of the random arm's trials, in samples, is printed to show
it), and runs, per task and seed, with the same trial budget, concurrency and workers per trial:

- Conveyor TPE + ASHA (the default), Conveyor Hyperband (TPE), Conveyor random without early stopping
  (Katib's default): the real engine, local executor and warm trainers (`tuning_common.run_pipeline`),
  on to the final training with the best trial's parameters and its evaluation on the test split;
- on request (`--arms`), "conveyor tpe+asha, pruned unseen": the default as it was before TPE learned
  from pruned trials by their values (`tuning.sampler_view`), to measure before and after in one run;
- on request, "conveyor tpe+asha, first rung at epoch 1": `warmupEpochs: 1`, the default's rungs from
  27 to 53 epochs (before the default's first rung became a 27th of the epochs, it was a tenth);
- on request, "conveyor tpe+asha, ray's asha rule": the default stopping trials by Ray Tune's ASHA rule at
  every rung, its last too (`OneRule`), everything else Conveyor's: what Ray's more lenient rule buys,
  and what it spends;
- on request, "conveyor tpe+asha, optuna's successive halving": the default as it was before its ASHA
  took Ray's rule before the last rung (`asha.Asha`): Optuna's top third at every rung (`OneRule`);
- on request, "conveyor tpe+asha, no verdict wait": the default as it was before its trials waited at
  each rung for the verdict (`tuning.verdict_epochs`), so that what a pruned trial trained while its
  stop travelled shows (epochs trained to the end, from the trials' progress files, beside the epochs
  the tuner saw);
- Ray Tune: `OptunaSearch` over an Optuna `TPESampler` (the same start-up trials, drawn from the same
  random streams as Conveyor's trials of the same seed (`SameDraws`), and constant liar) with
  `ASHAScheduler` (grace period = Conveyor's warm-up, reduction factor 3), each trial a Ray Train
  `TorchTrainer` (passed to the `Tuner`: Ray Train's classic Tune integration, see `start_ray`) with
  the same number of workers running Conveyor's own data arrays (the split Conveyor's prepare wrote),
  model builder, optimizer, batches, training step and validation; its best configuration (over every
  reported epoch) then goes through the same Conveyor final training and test evaluation, so the final
  models of all arms differ only by the parameters their search chose.

Arms alternate within every seed (their order rotates from seed to seed), so machine load falls on all
alike. The trainer's patience-based early stopping is off everywhere. Reported per task and arm: the
final model's test metric (mean, standard deviation, range), trial-epochs, the sweep's wall-clock
(`conveyor run` from start to the tuning stage done, its data preparation included; Ray: `Tuner.fit`,
with the Ray cluster started once beforehand), and the verdicts against issue 13's targets. Ray runs
offline: a local cluster started here, no dashboard, no usage stats.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tuning_decidable.py     # everything: 2 tasks x 8 seeds
    .venv/bin/python benchmarks/tuning_decidable.py --tasks digits --seeds 0 --trials 3 --parallelism 2 \
        --epochs 3                                                        # a smoke run, ~5 minutes
    .venv/bin/python benchmarks/tuning_decidable.py --report benchmarks/out/tuning_decidable.json
    .venv/bin/python benchmarks/tuning_decidable.py --report run.json --rerun same-seeds-again.json  # A/A

On the shared 2-core machine everything takes well over an hour, most of it Ray's trials (RESULTS.md:
how the recorded run was split, and what it cost).

Needs `pip install -e '.[bench]'` for the Ray arm (`--arms` without `ray` runs without it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import scipy.stats
import yaml

from conveyor.operator.api.resource import load_manifest
from conveyor.operator.api.spec import TrainingPipelineSpec, TuningSpec
from conveyor.operator.engine import asha, tuning, workload_kinds
from conveyor.operator.engine.tuning import Resource
from tuning_common import run_pipeline

REFERENCE = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "digits.yaml"
CONVEYOR_ARMS = {
    "conveyor tpe+asha": {"algorithm": "tpe", "pruner": "asha"},
    "conveyor tpe+hyperband": {"algorithm": "tpe", "pruner": "hyperband"},
    "conveyor random, no pruning": {"algorithm": "random", "pruner": "none"},
    # The first rung at epoch 1 (Ray's default grace period): three rungs from 27 epochs on, as the
    # default has since its first rung became a 27th of the epochs (a tenth always left two).
    "conveyor tpe+asha, first rung at epoch 1": {"algorithm": "tpe", "pruner": "asha", "warmupEpochs": 1},
}
RAY = "ray tune optuna-tpe+asha"
# Conveyor's default as it was before TPE learned from pruned trials by their values (see
# `tuning.sampler_view`): kept so that before and after can be measured side by side in one run.
BEFORE = "conveyor tpe+asha, pruned unseen"
FIRST_RUNG_1 = "conveyor tpe+asha, first rung at epoch 1"
RAY_RULE = "conveyor tpe+asha, ray's asha rule"
OPTUNA_RULE = "conveyor tpe+asha, optuna's successive halving"
# The default as it was before its trials waited at each rung for the verdict (`tuning.verdict_epochs`):
# a pruned trial trains on while its stop travels.
NO_WAIT = "conveyor tpe+asha, no verdict wait"
ARMS = [*CONVEYOR_ARMS, BEFORE, RAY_RULE, OPTUNA_RULE, NO_WAIT, RAY]
DEFAULT, RANDOM = "conveyor tpe+asha", "conveyor random, no pruning"
# Runs saved before the default's ASHA took Ray's rule before the last rung recorded the default as it
# was under DEFAULT's name, and the new rule under an arm of its own: `report` reads them as they are
# now. Runs saved since say so (`ASHA_KEY`).
ASHA_KEY = "asha"
RENAMED_BEFORE_ASHA = {
    DEFAULT: OPTUNA_RULE,
    "conveyor tpe+asha, ray's asha rule before the last rung": DEFAULT,
}
SYNTHETIC = {"kind": "classification", "samples": 20000, "features": 40, "classes": 10, "noise": 0.05}
SYNTHETIC_SPACE = [
    {"name": "optimizer.learningRate", "type": "float", "min": 1e-4, "max": 0.3, "log": True},
    {"name": "model.hiddenSize", "type": "int", "min": 8, "max": 512, "log": True},
    {"name": "model.layers", "type": "int", "min": 1, "max": 4},
    {"name": "model.dropout", "type": "float", "min": 0.0, "max": 0.7},
    {"name": "optimizer.weightDecay", "type": "float", "min": 1e-5, "max": 3.0, "log": True},
]


def task_manifest(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """The reference manifest made into the benchmark's pipeline for `task` (no tuning arm yet)."""
    doc: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    spec = doc["spec"]
    spec["tuning"].update(trials=args.trials, parallelism=args.parallelism)
    spec["training"].update(epochs=args.epochs, earlyStopping=None)
    spec["resources"].update(workers=args.workers, processesPerWorker=1)
    spec["evaluation"]["gate"] = None
    for section in ("ensemble", "serving"):
        spec.pop(section, None)
    if task == "synthetic":
        spec["data"] = {
            "source": "builtin://synthetic",
            "synthetic": SYNTHETIC,
            "split": {"validation": 0.15, "test": 0.15, "seed": 42, "stratify": True},
            "preprocessing": {"normalize": "standard"},
        }
        spec["model"] = {"architecture": "mlp", "hiddenSize": 128, "layers": 2, "dropout": 0.1}
        spec["training"]["batchSize"] = 128
        spec["tuning"]["parameters"] = SYNTHETIC_SPACE
    doc["metadata"]["name"] = f"bench-{task}"
    return doc


def with_arm(doc: dict[str, Any], arm: dict[str, str], seed: int) -> str:
    doc = copy.deepcopy(doc)
    doc["spec"]["tuning"].update(arm, seed=seed)
    return yaml.safe_dump(doc)


def with_params(doc: dict[str, Any], params: dict[str, Any]) -> str:
    """The pipeline without tuning, trained once with `params` (`section.field` names)."""
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    spec.pop("tuning")
    for name, value in params.items():
        section, field = name.split(".")
        spec[section][field] = value
    return yaml.safe_dump(doc)


def parse_spec(doc: dict[str, Any]) -> TrainingPipelineSpec:
    return load_manifest(yaml.safe_dump(doc))[0].spec


# --- Ray Tune -------------------------------------------------------------------------------------


def start_ray(cpus: int, scratch: Path) -> None:
    """A local Ray cluster, offline: no dashboard, no usage stats, logs kept out of the console."""
    os.environ.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DEDUP_LOGS="0",
        RAY_AIR_NEW_OUTPUT="0",
        TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1",
        # Ray Train's classic Tune integration: the TorchTrainer is the trial. Train V2 (a function
        # trial starting a TorchTrainer) needs the dashboard's state API to release a stopped trial's
        # placement group: without it, ASHA-stopped trials kept their CPUs and the next trial's
        # workers timed out waiting (measured).
        RAY_TRAIN_V2_ENABLED="0",
    )
    import ray

    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        _temp_dir=str(scratch / "ray"),
    )


def ray_trial_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker of a trial: Conveyor's data arrays, model, optimizer and training step,
    validated on rank 0 after each epoch and reported to Ray (every rank reports, as Ray requires)."""
    import ray.train
    import torch

    from conveyor.trainer import distributed
    from conveyor.trainer import train as conveyor_train
    from conveyor.trainer.artifacts import read_metadata
    from conveyor.trainer.config import TrainerConfig, with_overrides
    from conveyor.trainer.models import build_model

    params = {k: v for k, v in config.items() if k not in ("base", "data")}  # the searcher's
    trainer_config = with_overrides(TrainerConfig.model_validate(config["base"]), params)
    data_dir = Path(config["data"])
    context = ray.train.get_context()
    device = torch.device("cpu")
    ctx = distributed.Context(
        context.get_world_rank(), context.get_world_size(), context.get_local_rank(), device, "gloo"
    )
    training = trainer_config.training
    torch.manual_seed(training.seed + ctx.rank)
    meta = read_metadata(data_dir)
    batches, validation = conveyor_train.load_data(trainer_config, meta, data_dir, ctx)
    model = build_model(trainer_config.model, meta).to(device)
    conveyor_train.set_cpu_threads(model, ctx)
    forward = conveyor_train.parallelize(model, training.compile, ctx)
    dtype = conveyor_train.precision_dtype(training.precision, device)
    state = conveyor_train.build_state(
        trainer_config, meta, model, batches.steps, dtype, ctx, time.perf_counter()
    )
    autocast = conveyor_train.autocast_for(dtype, device)
    loss_fn = conveyor_train.make_loss(meta, training.label_smoothing)
    schedule = trainer_config.optimizer.schedule
    step_schedule = schedule.name != "constant" or schedule.warmup_epochs > 0
    metric = trainer_config.task.metric
    for epoch in range(1, training.epochs + 1):
        conveyor_train.train_epoch(
            forward, state, batches.epoch(epoch), loss_fn, autocast, training.gradient_clipping, step_schedule
        )
        value = validation(model, loss_fn, autocast)[metric] if ctx.is_main else float("nan")
        ray.train.report({metric: value, "epoch": epoch})


def ray_sweep(doc: dict[str, Any], seed: int, data_dir: Path, workdir: Path) -> dict[str, Any]:
    """Ray Tune's sweep of the pipeline's search space; its best configuration trained and tested by
    Conveyor's final training, exactly as the Conveyor arms' best."""
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    spec = parse_spec(with_doc_arm(doc, seed))
    tuning_spec = spec.tuning
    assert tuning_spec is not None
    metric, mode = spec.task.metric, "max" if spec.task.maximize else "min"
    epochs, workers = spec.training.epochs, spec.resources.workers
    space = tuning.distributions(tuning_spec)
    sampler = SameDraws(tuning_spec)
    storage = workdir / "ray-results"

    class History(tune.Callback):
        """Every reported value, per trial (Tune's own per-trial files are off: they cost time)."""

        def __init__(self) -> None:
            self.values: dict[str, list[float]] = {}

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            self.values.setdefault(trial.trial_id, []).append(float(result[metric]))

    history = History()
    base = spec.trainer_config().model_dump(mode="json", by_alias=True)
    trainer = TorchTrainer(
        ray_trial_loop,
        train_loop_config={"base": base, "data": str(data_dir)},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(storage), name=f"trainer-{seed}"),
    )
    tuner = tune.Tuner(
        trainer,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(
                space={f"train_loop_config/{name}": d for name, d in space.items()},
                metric=metric,
                mode=mode,
                sampler=sampler,
            ),
            scheduler=ASHAScheduler(
                metric=metric,
                mode=mode,
                time_attr="epoch",
                max_t=epochs,
                grace_period=tuning.warmup_epochs(tuning_spec, epochs),
                reduction_factor=tuning.REDUCTION_FACTOR,
            ),
            num_samples=tuning_spec.trials,
            max_concurrent_trials=tuning_spec.parallelism,
        ),
        run_config=RunConfig(storage_path=str(storage), name=f"sweep-{seed}", verbose=0, callbacks=[history]),
    )
    started = time.monotonic()
    grid = tuner.fit()
    sweep_seconds = time.monotonic() - started
    trials = []
    for result in grid:
        values = history.values.get(result.metrics.get("trial_id", ""), [])
        params = {k: v for k, v in result.config["train_loop_config"].items() if k in space}
        error = repr(result.error) if result.error else None
        trials.append({"params": params, "values": values, "error": error})
    best = grid.get_best_result(metric, mode, scope="all")
    best_params = {k: v for k, v in best.config["train_loop_config"].items() if k in space}
    final = run_pipeline(with_params(doc, best_params), workdir / f"final-{seed}", test=True)
    reported = [v for t in trials for v in t["values"]]
    return {
        "best": (max if mode == "max" else min)(reported) if reported else None,
        "test": final["test"],
        "trialEpochs": len(reported),
        "pruned": sum(len(t["values"]) < epochs for t in trials),
        "errors": sum(t["error"] is not None for t in trials),
        "tuneSeconds": round(sweep_seconds, 2),
        "seconds": round(time.monotonic() - started, 2),
        "phase": final["phase"],
        "message": final["message"],
        "bestParams": best_params,
        "trials": trials,
    }


class SameDraws(optuna.samplers.TPESampler):
    """Conveyor's TPE for Ray's searcher, drawing trial n from the random streams Conveyor's trial n
    draws from (`tuning.make_sampler` seeds each trial from the pair (seed, n); one `TPESampler(seed)`
    draws them all from one stream), so that for a seed both arms start from the same random trials and
    differ only in what their search and pruning make of them. Until 2026-11-30 the Ray arm used
    `TPESampler(seed)`: other start-up trials for the same seed, and with 5 of 9 trials random, which
    arm drew the better ones decided most of the gap (RESULTS.md, issue 13 item 3). A module-level
    class: Ray pickles its searcher."""

    def __init__(self, tuning_spec: TuningSpec) -> None:
        super().__init__(
            seed=tuning_spec.seed, n_startup_trials=tuning.startup_trials(tuning_spec), constant_liar=True
        )
        self.tuning_spec = tuning_spec
        self.conveyor_sampler = tuning.make_sampler  # Conveyor's own, even where a replay patches it later

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        conveyors = self.conveyor_sampler(self.tuning_spec, trial.number)
        assert isinstance(conveyors, optuna.samplers.TPESampler)
        self._rng, self._random_sampler = conveyors._rng, conveyors._random_sampler
        super().before_trial(study, trial)


class OneRule(asha.Asha):
    """Conveyor's ASHA (its rungs, where it keeps rung values) deciding every rung, its last too, by one
    rule: Ray Tune's cutoff (`asha.below_ray_cutoff`) or Optuna's top third (`asha.below_top_third`)."""

    RULES = {RAY_RULE: asha.below_ray_cutoff, OPTUNA_RULE: asha.below_top_third}

    def __init__(self, default: asha.Asha, arm: str) -> None:
        super().__init__(default.first_rung, default.last_rung)
        self.rule = self.RULES[arm]

    def stops(self, value: float, recorded: list[float], last: bool) -> bool:
        return self.rule(value, recorded)


def with_doc_arm(doc: dict[str, Any], seed: int) -> dict[str, Any]:
    return yaml.safe_load(with_arm(doc, CONVEYOR_ARMS[DEFAULT], seed))


def prepare_data(doc: dict[str, Any], out: Path) -> dict[str, int]:
    """Conveyor's prepare, once per task, for the Ray arm: the same split and normalisation."""
    from conveyor.trainer.data.prepare import prepare

    return dict(prepare(parse_spec(doc).trainer_config(), out).sizes)


# --- the run --------------------------------------------------------------------------------------


def conveyor_sweep(doc: dict[str, Any], arm: str, seed: int, workdir: Path) -> dict[str, Any]:
    if arm == BEFORE:  # TPE told of pruned trials as pruned (ranked below every completed one)
        view = tuning.sampler_view
        tuning.sampler_view = lambda state, value, intermediate, maximize: (state, value)
        try:
            return conveyor_sweep(doc, DEFAULT, seed, workdir)
        finally:
            tuning.sampler_view = view
    if arm == NO_WAIT:
        waits = workload_kinds.verdict_epochs
        workload_kinds.verdict_epochs = lambda spec: ()
        try:
            return conveyor_sweep(doc, DEFAULT, seed, workdir)
        finally:
            workload_kinds.verdict_epochs = waits
    if arm in OneRule.RULES:
        make_pruner = tuning.make_pruner

        def one_rule(tuning: TuningSpec, max_epochs: int | Resource) -> optuna.pruners.BasePruner:
            pruner = make_pruner(tuning, max_epochs)
            return OneRule(pruner, arm) if isinstance(pruner, asha.Asha) else pruner

        tuning.make_pruner = one_rule
        try:
            return conveyor_sweep(doc, DEFAULT, seed, workdir)
        finally:
            tuning.make_pruner = make_pruner
    outcome = run_pipeline(with_arm(doc, CONVEYOR_ARMS[arm], seed), workdir, test=True)
    best = max(
        (t for t in outcome["trials"] if t["value"] is not None), key=lambda t: t["value"], default=None
    )
    outcome["bestParams"] = best["params"] if best else None
    return outcome


def summarise(
    task: str, results: dict[str, list[dict[str, Any]]], sizes: dict[str, int], epochs: int
) -> None:
    one_test, one_val = 1 / sizes["test"], 1 / sizes["validation"]
    print(
        f"\n### {task}: {sizes['validation']} validation / {sizes['test']} test rows "
        f"(one test sample = {one_test:.5f})\n"
    )
    print(
        "| arm | final test metric: mean | sd | min-max | trial-epochs (mean) | trained to the end (mean) "
        "| sweep s (mean) | best validation (mean) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    means: dict[str, dict[str, float]] = {}
    for arm, outcomes in results.items():
        tests = [o["test"] for o in outcomes if o["test"] is not None]
        if not tests:
            print(f"| {arm} | no result | | | | | | |")
            continue
        m = {
            "test": statistics.mean(tests),
            "sd": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            "epochs": statistics.mean(o["trialEpochs"] for o in outcomes),
            "seconds": statistics.mean(o["tuneSeconds"] for o in outcomes),
            "best": statistics.mean(o["best"] for o in outcomes if o["best"] is not None),
        }
        means[arm] = m
        trained = [o["trainedEpochs"] for o in outcomes if "trainedEpochs" in o]  # Ray's and older runs: none
        print(
            f"| {arm} | {m['test']:.4f} | {m['sd']:.4f} | {min(tests):.4f}-{max(tests):.4f} "
            f"| {m['epochs']:.1f} | {f'{statistics.mean(trained):.1f}' if trained else '-'} "
            f"| {m['seconds']:.1f} | {m['best']:.4f} |"
        )
    random_values = [
        t["values"][-1] for o in results.get(RANDOM, []) for t in o["trials"] if len(t["values"]) == epochs
    ]
    if len(random_values) > 1:
        spread = statistics.stdev(random_values)
        print(
            f"\nspread of the random arm's {len(random_values)} trials (last-epoch validation): "
            f"sd {spread:.4f} = {spread / one_val:.0f} validation samples, "
            f"range {min(random_values):.4f}-{max(random_values):.4f}"
        )
    if DEFAULT in means and RANDOM in means:
        d, r = paired(results[DEFAULT], results[RANDOM])
        gap, ratio = d["test"] - r["test"], d["epochs"] / r["epochs"]
        print(
            f"verdict default vs random ({d['n']} seeds): test {d['test']:.4f} vs {r['test']:.4f} (gap "
            f"{gap:+.4f} = {gap / one_test:+.1f} test samples): {'met' if gap >= -one_test else 'NOT met'}; "
            f"trial-epochs {ratio:.0%} of random (target <= 40%): {'met' if ratio <= 0.4 else 'NOT met'}"
        )
        print(f"  paired per seed, default - random: {seed_differences(d, r, one_test)}")
    if DEFAULT in means and RAY in means:
        d, r = paired(results[DEFAULT], results[RAY])
        gap, ratio = d["test"] - r["test"], d["seconds"] / r["seconds"]
        print(
            f"verdict default vs Ray Tune (the {d['n']} seeds both ran): wall-clock {d['seconds']:.1f} vs "
            f"{r['seconds']:.1f} s = {ratio:.2f}x (target <= 0.5x): {'met' if ratio <= 0.5 else 'NOT met'}; "
            f"test {d['test']:.4f} vs {r['test']:.4f} (gap {gap:+.4f} = {gap / one_test:+.1f} test samples): "
            f"{'met' if gap >= 0 else 'NOT met'}; trial-epochs {d['epochs']:.1f} vs {r['epochs']:.1f}"
        )
        print(f"  paired per seed, default - Ray Tune: {seed_differences(d, r, one_test)}")
    for arm, other in (
        (DEFAULT, BEFORE),
        (BEFORE, RAY),
        (FIRST_RUNG_1, RANDOM),
        (FIRST_RUNG_1, RAY),
        (DEFAULT, OPTUNA_RULE),
        (DEFAULT, RAY_RULE),
        (DEFAULT, NO_WAIT),
        (NO_WAIT, RAY),
        (RAY_RULE, RANDOM),
        (RAY_RULE, RAY),
        (OPTUNA_RULE, RANDOM),
        (OPTUNA_RULE, RAY),
    ):
        if arm in means and other in means:
            a, b = paired(results[arm], results[other])
            print(
                f"{arm} vs {other} ({a['n']} seeds): test {a['test']:.4f} vs {b['test']:.4f}, trial-epochs "
                f"{a['epochs']:.1f} vs {b['epochs']:.1f}; per seed: {seed_differences(a, b, one_test)}"
            )


def seed_differences(a: dict[str, Any], b: dict[str, Any], one: float) -> str:
    """Per-seed test differences (`a` - `b`) in samples, with their mean, standard error, spread a seed
    and 95% interval (Student's t over the seeds): how much of a gap between arms is the search's own
    seed-to-seed variation, and whether the seeds decide its sign ("first ahead": `a`, "second ahead":
    `b`) or not ("undecided")."""
    diffs = [(a["tests"][seed] - b["tests"][seed]) / one for seed in sorted(a["tests"])]
    listed = ", ".join(f"{d:+.0f}" for d in diffs)
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return f"{listed} samples; mean {mean:+.1f}"
    spread = statistics.stdev(diffs)
    error = spread / len(diffs) ** 0.5
    half = scipy.stats.t.ppf(0.975, len(diffs) - 1) * error
    low, high = mean - half, mean + half
    sign = "undecided" if low <= 0 <= high else ("first ahead" if low > 0 else "second ahead")
    return (
        f"{listed} samples; mean {mean:+.1f} +- {error:.1f} (standard error; sd {spread:.1f} a seed), "
        f"95% interval {low:+.1f} to {high:+.1f}: {sign}"
    )


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Means of two arms over the seeds both have a test result for (the Ray arm may run fewer)."""
    seeds = {o["seed"] for o in a if o["test"] is not None} & {o["seed"] for o in b if o["test"] is not None}

    def means(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        kept = [o for o in outcomes if o["seed"] in seeds]
        return {
            "n": len(kept),
            "tests": {o["seed"]: o["test"] for o in kept},
            "test": statistics.mean(o["test"] for o in kept),
            "epochs": statistics.mean(o["trialEpochs"] for o in kept),
            "seconds": statistics.mean(o["tuneSeconds"] for o in kept),
        }

    return means(a), means(b)


def save(
    args: argparse.Namespace, sizes: dict[str, dict[str, int]], results: dict[str, dict[str, Any]]
) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) for k, v in vars(args).items()}
    saved = {"args": config, ASHA_KEY: "ray's rule before the last rung", "sizes": sizes, "results": results}
    args.out.write_text(json.dumps(saved, indent=1) + "\n")


Merged = dict[str, dict[str, dict[int, dict[str, Any]]]]  # task -> arm -> seed -> outcome


def merge(paths: list[Path]) -> tuple[Merged, dict[str, dict[str, int]], int]:
    """Saved runs merged per task and arm (runs split by seed read as one; where two runs hold the same
    task, arm and seed, the later path's replaces the earlier's), with the splits' sizes and the epochs
    every run trained."""
    merged: Merged = {}
    sizes: dict[str, dict[str, int]] = {}
    epochs: set[int] = set()
    for path in paths:
        saved = json.loads(path.read_text())
        epochs.add(int(saved["args"]["epochs"]))
        sizes.update(saved["sizes"])
        renamed = {} if ASHA_KEY in saved else RENAMED_BEFORE_ASHA
        for task, arms in saved["results"].items():
            for recorded, outcomes in arms.items():
                arm = renamed.get(recorded, recorded)
                merged.setdefault(task, {}).setdefault(arm, {}).update({o["seed"]: o for o in outcomes})
    if len(epochs) != 1:
        raise SystemExit(f"the runs trained different epochs ({sorted(epochs)}); report them apart")
    return merged, sizes, epochs.pop()


def report(paths: list[Path], reruns: list[Path] | None = None) -> None:
    """The tables of saved runs (`merge`: a re-run of one arm after a change reads against the other
    arms of an earlier run); with `reruns`, runs of the same arms and seeds read apart, each arm's
    per-seed difference from the reported runs: the spread an arm has against itself, from timing
    alone, beside the gaps between arms."""
    merged, sizes, epochs = merge(paths)
    for task, arms in merged.items():
        ordered = {arm: [arms[arm][seed] for seed in sorted(arms[arm])] for arm in ARMS if arm in arms}
        for arm, outcomes in ordered.items():
            print(f"{task} / {arm}: seeds {[o['seed'] for o in outcomes]}")
        summarise(task, ordered, sizes[task], epochs)
    if not reruns:
        return
    again, _, again_epochs = merge(reruns)
    if again_epochs != epochs:
        raise SystemExit(f"the re-runs trained {again_epochs} epochs, the runs {epochs}; report them apart")
    for task, arms in again.items():
        one_test = 1 / sizes[task]["test"]
        for arm, by_seed in arms.items():
            if not set(by_seed) & set(merged.get(task, {}).get(arm, {})):
                print(f"{task} / {arm}: the re-runs share no seed with the runs")
                continue
            first, second = paired(list(merged[task][arm].values()), list(by_seed.values()))
            print(
                f"{task} / {arm}, re-run - run ({first['n']} seeds): test {second['test']:.4f} vs "
                f"{first['test']:.4f}, trial-epochs {second['epochs']:.1f} vs {first['epochs']:.1f}; "
                f"per seed: {seed_differences(second, first, one_test)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks", nargs="+", choices=["digits", "synthetic"], default=["digits", "synthetic"]
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=ARMS,
        default=[a for a in ARMS if a not in (BEFORE, FIRST_RUNG_1, RAY_RULE, OPTUNA_RULE)],
        help=f"default: every arm but {BEFORE!r} (the default as it was, for before/after runs), "
        f"{FIRST_RUNG_1!r}, {RAY_RULE!r} and {OPTUNA_RULE!r}",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--parallelism", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="training processes per trial, every arm")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument(
        "--ray-seeds", type=int, nargs="+", help="seeds the Ray Tune arm runs (default: every seed)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "tuning_decidable.json")
    parser.add_argument(
        "--report", type=Path, nargs="+", help="print the tables of saved runs (their --out files) and exit"
    )
    parser.add_argument(
        "--rerun",
        type=Path,
        nargs="+",
        help="with --report: saved runs of the same arms on the same seeds, each arm's per-seed difference "
        "from the reported runs (its spread against itself)",
    )
    args = parser.parse_args()
    if args.rerun and not args.report:
        parser.error("--rerun compares against --report's runs; give --report too")
    if args.report:
        report(args.report, args.rerun)
        return
    if args.parallelism > args.trials:
        parser.error(f"--parallelism {args.parallelism} is more than --trials {args.trials}; lower it")
    if args.ray_seeds and not set(args.ray_seeds) <= set(args.seeds):
        parser.error(f"--ray-seeds {args.ray_seeds} must be among --seeds {args.seeds}")
    began = time.monotonic()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    sizes: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="conveyor-decidable-") as tmp:
        scratch = Path(tmp)
        if RAY in args.arms:
            start_ray(args.parallelism * args.workers + 1, scratch)
            print(f"ray cluster up in {time.monotonic() - began:.1f} s", flush=True)
        for task in args.tasks:
            doc = task_manifest(task, args)
            sizes[task] = prepare_data(doc, scratch / task / "data")
            results[task] = {arm: [] for arm in args.arms}
            for index, seed in enumerate(args.seeds):
                shift = index % len(args.arms)
                for arm in args.arms[shift:] + args.arms[:shift]:
                    if arm == RAY and args.ray_seeds is not None and seed not in args.ray_seeds:
                        continue
                    workdir = scratch / task / "-".join([*arm.replace(",", "").split(), str(seed)])
                    if arm == RAY:
                        outcome = ray_sweep(doc, seed, scratch / task / "data", workdir)
                    else:
                        outcome = conveyor_sweep(doc, arm, seed, workdir)
                    results[task][arm].append({"seed": seed, **outcome})
                    save(args, sizes, results)  # as it goes: a stopped run keeps what it measured
                    summary = {k: v for k, v in outcome.items() if k not in ("trials", "bestParams")}
                    print(
                        json.dumps(
                            {
                                "t": round(time.monotonic() - began),
                                "task": task,
                                "arm": arm,
                                "seed": seed,
                                **summary,
                            }
                        ),
                        flush=True,
                    )
    print(
        f"\nconfiguration: {args.trials} trials, {args.parallelism} at a time, {args.workers} worker(s) per "
        f"trial, {args.epochs} epochs, seeds {args.seeds}; total {time.monotonic() - began:.0f} s"
    )
    save(args, sizes, results)
    for task in args.tasks:
        summarise(task, results[task], sizes[task], args.epochs)
    print(f"\nevery trial's parameters and per-epoch values: {args.out}")


if __name__ == "__main__":
    main()

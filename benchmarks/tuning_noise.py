"""How much of the tuning-efficiency comparison is one validation sample: the benchmark, replayed.

`tuning_efficiency.py` compares the best validation accuracy of two 12-trial studies on digits, whose
validation split has 270 images: 0.9963 and 0.9926 differ by one image, and each trial's value is its
best of 30 noisy epochs. This replays both arms many times on a surrogate of the recorded learning
curves, so the comparison can be read as a distribution instead of a handful of draws:

- the surrogate curve of a configuration is the distance-weighted mean of the 3 nearest recorded
  curves (log learning rate, log batch size, dropout; each smoothed over 5 epochs), plus independent
  per-epoch noise rounded to whole images, its size calibrated so that the simulated best-of-30 of the
  recorded configurations matches their recorded best on average;
- each study runs the engine's own sampler and pruner (`conveyor.operator.engine.tuning`) with ask/tell,
  `parallelism` trials advancing one epoch at a time.

Reported per arm: mean best validation accuracy, how often it reaches the best recorded value, the
trial-epochs spent, and how often the Conveyor arm is at least equal to the Katib-default arm run on
the same noise seed.

    .venv/bin/python benchmarks/tuning_noise.py --studies 200
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from conveyor.operator.api.resource import load_manifest
from conveyor.operator.api.spec import TuningSpec
from conveyor.operator.engine import tuning

RECORDED = Path(__file__).parent / "out" / "tuning_efficiency.json"
REFERENCE = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "digits.yaml"
VALIDATION_IMAGES = 270
EPOCHS = 30


class Surrogate:
    def __init__(self, curves: list[tuple[dict[str, Any], list[float]]]) -> None:
        self.points = np.array([self._point(p) for p, _ in curves])
        kernel = np.ones(5) / 5
        self.means = np.array(
            [np.convolve(np.pad(v, 2, mode="edge"), kernel, mode="valid") for _, v in curves]
        )
        self.recorded_best = np.array([max(v) for _, v in curves])
        self.sigma = 0.0

    @staticmethod
    def _point(params: dict[str, Any]) -> list[float]:
        return [
            math.log10(params["optimizer.learningRate"]),
            math.log2(params["training.batchSize"]) / 2,
            2 * params["model.dropout"],
        ]

    def mean_curve(self, params: dict[str, Any]) -> np.ndarray:
        distance = np.sqrt(((self.points - np.array(self._point(params))) ** 2).sum(1))
        nearest = np.argsort(distance)[:3]
        weights = 1 / (distance[nearest] + 0.05)
        return np.asarray((self.means[nearest] * weights[:, None]).sum(0) / weights.sum())

    def curve(self, params: dict[str, Any], rng: np.random.Generator) -> list[float]:
        return list(self._noisy(self.mean_curve(params), rng))

    def _noisy(self, mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`mean` plus per-epoch noise, in whole validation images."""
        noisy = mean + rng.normal(0, self.sigma, size=EPOCHS)
        return np.asarray(np.clip(np.round(noisy * VALIDATION_IMAGES) / VALIDATION_IMAGES, 0, 1))

    def calibrate(self, rng: np.random.Generator) -> None:
        """The per-epoch noise under which recorded good configurations' best-of-30 is as recorded."""
        good = self.recorded_best >= 0.97
        target = float(self.recorded_best[good].mean())
        errors = {}
        for sigma in np.arange(0.002, 0.012, 0.0005):
            self.sigma = float(sigma)
            simulated = [
                max(self._noisy(self.means[i], rng)) for i in np.flatnonzero(good) for _ in range(20)
            ]
            errors[float(sigma)] = abs(float(np.mean(simulated)) - target)
        self.sigma = min(errors, key=errors.__getitem__)


def recorded_curves(path: Path) -> list[tuple[dict[str, Any], list[float]]]:
    """Every distinct configuration trained for all epochs in the recorded benchmark run."""
    seen: dict[str, tuple[dict[str, Any], list[float]]] = {}
    for outcomes in json.loads(path.read_text())["arms"].values():
        for outcome in outcomes:
            for trial in outcome["trials"]:
                values = trial["values"]
                if len(values) == EPOCHS and all(v is not None for v in values):
                    seen[json.dumps(trial["params"], sort_keys=True)] = (trial["params"], values)
    return list(seen.values())


def study(tuning_spec: TuningSpec, surrogate: Surrogate, noise_seed: int) -> tuple[float, int]:
    """One study with the engine's sampler and pruner; its best value and trial-epochs."""
    rng = np.random.default_rng(noise_seed)
    space = tuning.distributions(tuning_spec)
    optuna_study = optuna.create_study(
        direction="maximize",
        pruner=tuning.make_pruner(tuning_spec, EPOCHS),
        sampler=tuning.make_sampler(tuning_spec, 0),
    )
    running: dict[int, tuple[optuna.Trial, list[float], int]] = {}
    asked = spent = 0
    finals: list[float] = []
    while asked < tuning_spec.trials or running:
        while asked < tuning_spec.trials and len(running) < tuning_spec.parallelism:
            optuna_study.sampler = tuning.make_sampler(tuning_spec, asked)
            trial = optuna_study.ask(fixed_distributions=space)
            running[trial.number] = (trial, surrogate.curve(trial.params, rng), 0)
            asked += 1
        for number, (trial, curve, epoch) in list(running.items()):
            epoch += 1
            spent += 1
            trial.report(curve[epoch - 1], epoch)
            if epoch == EPOCHS:
                finals.append(max(curve))
                optuna_study.tell(trial, max(curve))
                del running[number]
            elif trial.should_prune():
                optuna_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                del running[number]
            else:
                running[number] = (trial, curve, epoch)
    return (max(finals) if finals else 0.0), spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--recorded", type=Path, default=RECORDED)
    args = parser.parse_args()
    if not args.recorded.exists():
        raise SystemExit(f"{args.recorded} not found: run benchmarks/tuning_efficiency.py first")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    surrogate = Surrogate(recorded_curves(args.recorded))
    surrogate.calibrate(np.random.default_rng(0))
    top = float(surrogate.recorded_best.max())
    print(f"{len(surrogate.points)} recorded curves; per-epoch noise {surrogate.sigma:.4f} (x270 images)")
    base: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    katib = "random, no early stopping (Katib default)"
    arms = {
        katib: {"algorithm": "random", "pruner": "none"},
        "tpe+asha (Conveyor)": {"algorithm": "tpe", "pruner": "asha"},
        "tpe, no pruning": {"algorithm": "tpe", "pruner": "none"},
    }
    results: dict[str, list[tuple[float, int]]] = {}
    print(
        f"\n| arm ({args.studies} studies each) | mean best | best >= {top:.4f} | trial-epochs | >= Katib |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, arm in arms.items():
        base["spec"]["tuning"].update(arm)
        spec = load_manifest(yaml.safe_dump(base))[0].spec.tuning
        assert spec is not None
        results[name] = [
            study(spec.model_copy(update={"seed": s}), surrogate, 1000 + s) for s in range(args.studies)
        ]
        best = np.array([b for b, _ in results[name]])
        spent = np.mean([e for _, e in results[name]])
        baseline = np.array([b for b, _ in results[katib]])
        print(
            f"| {name} | {best.mean():.4f} | {np.mean(best >= top - 1e-9):.0%} | {spent:.0f} "
            f"({spent / (EPOCHS * spec.trials):.0%}) | {np.mean(best >= baseline - 1e-9):.0%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Tuning efficiency on digits: TPE with ASHA pruning vs random search without early stopping.

Katib's default set-up is random search with no early stopping; Conveyor's reference manifest uses TPE
with ASHA. Both arms get the reference manifest's model, data, search space and trial budget and run
the real thing — the engine, the local executor and torchrun trainers — until the tuning stage is
done. The trainer's own patience-based early stopping is off in both arms, so the comparison isolates
the tuning method (`--trainer-early-stopping` keeps the manifest's setting in the Conveyor arm).
Reported per arm: the best validation accuracy and the trial-epochs spent (epochs actually trained,
summed over trials). Target: TPE+ASHA reaches at least the same best accuracy with at most 50% of the
trial-epochs. With `--test`, each arm also goes on to what a user gets from it: the final training
with the best trial's parameters and its test accuracy (the best validation accuracy is a maximum over
every epoch of every completed trial on 270 images, so it is biased upwards by the search itself).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tuning_efficiency.py --seeds 0 1 2 3 4 5 --test
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tuning_common import run_pipeline

REFERENCE = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "digits.yaml"
ARMS = {
    "tpe+asha (Conveyor)": {"algorithm": "tpe", "pruner": "asha"},
    "random, no early stopping (Katib default)": {"algorithm": "random", "pruner": "none"},
}


def manifest(arm: dict[str, str], seed: int, trials: int, epochs: int, early_stopping: bool = False) -> str:
    doc: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    spec = doc["spec"]
    spec["tuning"].update(arm, seed=seed, trials=trials)
    spec["training"]["epochs"] = epochs
    if arm["pruner"] == "none" or not early_stopping:
        spec["training"]["earlyStopping"] = None
    spec.pop("ensemble", None)
    spec.pop("serving", None)
    doc["metadata"]["name"] = f"bench-{arm['algorithm']}-{seed}"
    return yaml.safe_dump(doc)


def run_arm(
    arm: dict[str, str],
    seed: int,
    trials: int,
    epochs: int,
    workdir: Path,
    early_stopping: bool = False,
    test: bool = False,
) -> dict[str, Any]:
    outcome = run_pipeline(
        manifest(arm, seed, trials, epochs, early_stopping), workdir / f"{arm['algorithm']}-{seed}", test
    )
    return {
        "best": outcome["best"],
        "testAccuracy": outcome["test"],
        **{k: outcome[k] for k in ("trialEpochs", "pruned", "seconds", "trials")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--trainer-early-stopping", action="store_true", help="keep patience in the TPE arm")
    parser.add_argument("--test", action="store_true", help="go on to the final model and its test accuracy")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "tuning_efficiency.json")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in ARMS}
    with tempfile.TemporaryDirectory(prefix="conveyor-tuning-") as tmp:
        for seed in args.seeds:
            for name, arm in ARMS.items():
                outcome = run_arm(
                    arm, seed, args.trials, args.epochs, Path(tmp), args.trainer_early_stopping, args.test
                )
                results[name].append(outcome)
                summary = {k: v for k, v in outcome.items() if k != "trials"}
                print(json.dumps({"arm": name, "seed": seed, **summary}), flush=True)
    print(
        f"\n| arm | best validation accuracy (mean over seeds {args.seeds}) | trial-epochs (mean) | pruned "
        "| final model's test accuracy (mean) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, outcomes in results.items():
        best = statistics.mean(o["best"] for o in outcomes)
        spent = statistics.mean(o["trialEpochs"] for o in outcomes)
        pruned = statistics.mean(o["pruned"] for o in outcomes)
        tests = [o["testAccuracy"] for o in outcomes if o["testAccuracy"] is not None]
        test = f"{statistics.mean(tests):.4f}" if tests else "-"
        print(f"| {name} | {best:.4f} | {spent:.0f} | {pruned:.1f} | {test} |")
    conveyor, katib = (results[n] for n in ARMS)
    ratio = statistics.mean(o["trialEpochs"] for o in conveyor) / statistics.mean(
        o["trialEpochs"] for o in katib
    )
    print(f"\ntrial-epochs ratio (Conveyor / Katib default): {ratio:.2f}")
    per_seed = [(c["best"] or 0.0, k["best"] or 0.0) for c, k in zip(conveyor, katib, strict=True)]
    print(
        "per seed (Conveyor vs Katib default): "
        + ", ".join(f"{s}: {c:.4f} vs {k:.4f}" for s, (c, k) in zip(args.seeds, per_seed, strict=True))
        + f"; at least equal on {sum(c >= k for c, k in per_seed)} of {len(per_seed)}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seeds": args.seeds, "arms": results}, indent=1) + "\n")
    print(f"every trial's parameters and per-epoch values: {args.out}")


if __name__ == "__main__":
    main()

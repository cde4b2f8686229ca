"""A user's model (`model.entrypoint`) in Conveyor's loop vs the same model in a hand-written DDP loop.

The claim: bringing your own model costs nothing over writing the loop yourself — Conveyor's loop
(validation, metrics and a checkpoint every epoch included) trains a user model at >= 0.97x the
samples/s of `training_peers/ddp_loop.py` on the same model and data. The built-in model's pair is run
side by side, in the same rounds, as the reference point of `training_overhead.py`.

The user model is the own-model example's residual MLP (`examples/own-model/src`,
`mymodels.residual:build`); `ddp_loop.py` builds it through the same `build_model`, which dispatches to
the entrypoint, so both loops train the very same network. Data, optimizer, processes and the
measurement (first epoch dropped, median epoch per run, median over interleaved rounds) are those of
`training_overhead.py`. Raw numbers go to benchmarks/out/training/user_model_overhead.json.

    .venv/bin/python benchmarks/user_model_overhead.py                # ~4-6 minutes on 2 cores
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
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "trainer")]

from training_overhead import MAIN_PYTHON, OUT, last_json, run, torchrun  # noqa: E402

USER_CODE = ROOT / "examples" / "own-model" / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=24000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--width", type=int, default=128, help="the user model's model.options.width")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(USER_CODE), os.environ.get("PYTHONPATH")]))

    from conveyor.trainer.config import TrainerConfig
    from conveyor.trainer.data.prepare import prepare

    models = {
        "builtin": {"architecture": "mlp", "hiddenSize": 256},
        "user": {"entrypoint": "mymodels.residual:build", "options": {"width": args.width, "blocks": 2}},
    }
    base = {
        "data": {
            "source": "builtin://synthetic",
            "synthetic": {"samples": args.samples, "features": args.features, "classes": 10},
        },
        "optimizer": {"name": "adamw", "learningRate": 2e-3, "weightDecay": 0.0},
        "training": {"epochs": args.epochs, "batchSize": args.batch_size, "earlyStopping": None},
    }
    configs = {name: TrainerConfig.model_validate({**base, "model": model}) for name, model in models.items()}
    data_dir = OUT / f"data-{args.samples}x{args.features}"
    meta = prepare(configs["builtin"], data_dir)

    def conveyor(model: str, round_: int) -> list[float]:
        out = OUT / f"conveyor-{model}-{round_}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        wire = json.dumps(configs[model].to_wire())
        stage = ["-m", "conveyor.trainer", "train", "--config", wire, "--data", str(data_dir)]
        stage += ["--out", str(out)]
        run(torchrun(MAIN_PYTHON, *stage))
        events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
        return [e["samplesPerSecond"] for e in events if e.get("event") == "epoch"]

    def ddp(model: str, round_: int) -> list[float]:
        spec = configs[model].model.model_dump_json(by_alias=True)
        command = ["benchmarks/training_peers/ddp_loop.py", str(data_dir), spec, str(args.epochs)]
        rates: list[float] = last_json(run(torchrun(MAIN_PYTHON, *command, str(args.batch_size))).stdout)[
            "samplesPerSecond"
        ]
        return rates

    contenders = [(loop, model) for model in models for loop in ("conveyor", "ddp")]
    raw: dict[str, list[list[float]]] = {f"{loop}-{model}": [] for loop, model in contenders}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for round_ in range(1, args.rounds + 1):
        for loop, model in contenders:
            rates = (conveyor if loop == "conveyor" else ddp)(model, round_)
            raw[f"{loop}-{model}"].append(rates)
            print(
                f"round {round_} {loop}-{model:8s} " + " ".join(f"{r:8.0f}" for r in rates), file=sys.stderr
            )
    medians = {name: statistics.median(statistics.median(r[1:]) for r in runs) for name, runs in raw.items()}
    summary = {
        "started": started,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "setup": {
            "models": models,
            "featureShape": meta.feature_shape,
            "trainRows": meta.sizes["train"],
            "batchSize": args.batch_size,
            "epochs": args.epochs,
            "processes": 2,
            "backend": "gloo",
        },
        "samplesPerSecond": medians,
        "userConveyorVsDdp": medians["conveyor-user"] / medians["ddp-user"],
        "builtinConveyorVsDdp": medians["conveyor-builtin"] / medians["ddp-builtin"],
        "raw": raw,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "user_model_overhead.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "raw"}, indent=1))


if __name__ == "__main__":
    main()

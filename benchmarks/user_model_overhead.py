"""A user's model (`model.entrypoint`) in Conveyor's loop vs the same model in a hand-written DDP loop.

The claim: bringing your own model costs nothing over writing the loop yourself — Conveyor's loop
(validation, metrics and a checkpoint every epoch included) trains a user model at >= 0.97x the
samples/s of `training_peers/ddp_loop.py` on the same model and data. The built-in model's pair is run
side by side, in the same rounds, as the reference point of `training_overhead.py`.

The user model is the own-model example's residual MLP (`examples/own-model/src`,
`mymodels.residual:build`); `ddp_loop.py` builds it through the same `build_model`, which dispatches to
the entrypoint, so both loops train the very same network. Data, optimizer, processes and the
measurement (first epoch dropped, median epoch per run, median over interleaved rounds) are those of
`training_overhead.py`, from `training_common.py`. Raw numbers go to
benchmarks/out/training/user_model_overhead.json.

    .venv/bin/python benchmarks/user_model_overhead.py                # ~4-6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "trainer")]

import training_common as common  # noqa: E402

USER_CODE = ROOT / "examples" / "own-model" / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_arguments(parser)
    parser.add_argument("--width", type=int, default=128, help="the user model's model.options.width")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(USER_CODE), os.environ.get("PYTHONPATH")]))

    from conveyor.trainer.config import TrainerConfig

    models = {
        "builtin": {"architecture": "mlp", "hiddenSize": 256},
        "user": {"entrypoint": "mymodels.residual:build", "options": {"width": args.width, "blocks": 2}},
    }
    base = common.sections(args)
    configs = {name: TrainerConfig.model_validate({**base, "model": model}) for name, model in models.items()}
    data_dir, meta = common.prepared(configs["builtin"], args)

    def conveyor(model: str) -> Callable[[int], list[float]]:
        return lambda round_: common.conveyor_rates(
            configs[model], data_dir, common.OUT / f"conveyor-{model}-{round_}"
        )

    def ddp(model: str) -> Callable[[int], list[float]]:
        spec = configs[model].model.model_dump_json(by_alias=True)
        return lambda round_: common.peer_rates(
            common.MAIN_PYTHON, common.DDP_LOOP, data_dir, spec, args.epochs, args.batch_size
        )

    contenders = {
        f"{loop}-{model}": make(model)
        for model in models
        for loop, make in (("conveyor", conveyor), ("ddp", ddp))
    }
    started = common.now()
    raw = common.interleaved(args.rounds, contenders)
    rates = common.medians(raw)
    ratios = {
        "userConveyorVsDdp": rates["conveyor-user"] / rates["ddp-user"],
        "builtinConveyorVsDdp": rates["conveyor-builtin"] / rates["ddp-builtin"],
    }
    result = common.summary(started, args, meta, {"models": models}, rates, ratios, raw)
    common.write(result, "user_model_overhead.json")


if __name__ == "__main__":
    main()

"""Training-loop overhead: Conveyor's trainer vs a minimal hand-written DDP loop vs PyTorch Lightning.

All three train the same model (`conveyor.trainer.models.build_model`, same spec) on the same prepared
data (`builtin://synthetic`, in memory) with the same batch size and optimizer (AdamW, lr 2e-3, no
weight decay), as 2 processes on gloo under torchrun, one thread each (OMP_NUM_THREADS=1):

- conveyor:  `python -m conveyor.trainer train` (validation, metrics, checkpoints every epoch included
             in the run; samples/s is its own per-epoch training throughput from progress.jsonl)
- ddp:       `training_peers/ddp_loop.py`, the same sliced in-memory data path and nothing else
- lightning: `training_peers/lightning_loop.py`, Lightning's Trainer with its standard DataLoader
             (run from `.venv-bench`, which has pytorch-lightning; see README.md)

Contenders run one after another, interleaved round by round so they share the machine's conditions;
each run's first epoch is warm-up and dropped; the median epoch of each run, then the median over
rounds, is reported (`training_common.py`, shared with `user_model_overhead.py`). Raw numbers go to
benchmarks/out/training/overhead.json.

    .venv/bin/python benchmarks/training_overhead.py                  # ~3-4 minutes on 2 cores
    .venv/bin/python benchmarks/training_overhead.py --rounds 1 --contenders conveyor ddp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "trainer")]

import training_common as common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_arguments(parser)
    parser.add_argument("--architecture", default="mlp")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--contenders", nargs="+", default=["conveyor", "ddp", "lightning"])
    args = parser.parse_args()

    from conveyor.trainer.config import ModelSpec, TrainerConfig

    manifest = {
        **common.sections(args),
        "model": {"architecture": args.architecture, "hiddenSize": args.hidden_size},
    }
    config = TrainerConfig.model_validate(manifest)
    data_dir, meta = common.prepared(config, args)
    spec = ModelSpec.model_validate(manifest["model"]).model_dump_json(by_alias=True)

    def lightning(round_: int) -> list[float]:
        if not common.BENCH_PYTHON.exists():
            raise SystemExit(
                f"{common.BENCH_PYTHON} is missing; set up .venv-bench as benchmarks/README.md says"
            )
        script = "benchmarks/training_peers/lightning_loop.py"
        return common.peer_rates(common.BENCH_PYTHON, script, data_dir, spec, args.epochs, args.batch_size)

    runners = {
        "conveyor": lambda round_: common.conveyor_rates(config, data_dir, common.OUT / f"conveyor-{round_}"),
        "ddp": lambda round_: common.peer_rates(
            common.MAIN_PYTHON, common.DDP_LOOP, data_dir, spec, args.epochs, args.batch_size
        ),
        "lightning": lightning,
    }
    started = common.now()
    raw = common.interleaved(args.rounds, {name: runners[name] for name in args.contenders})
    rates = common.medians(raw)
    ratios = {}
    if "ddp" in rates and "conveyor" in rates:
        ratios["conveyorVsDdp"] = rates["conveyor"] / rates["ddp"]
    if "lightning" in rates and "conveyor" in rates:
        ratios["conveyorVsLightning"] = rates["conveyor"] / rates["lightning"]
    result = common.summary(started, args, meta, {"model": manifest["model"]}, rates, ratios, raw)
    common.write(result, "overhead.json")


if __name__ == "__main__":
    main()

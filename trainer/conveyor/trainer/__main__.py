"""`python -m conveyor.trainer <stage> ...`: the one entry point of every workload container.

Each stage lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`; only the
chosen stage's module is imported, so `serve` never loads the training code (and `--help` loads none).
Config and data errors exit with status 2 and one line on stderr naming the problem and the fix; a
stage that owns a result file (train) also records the failure there for the control plane.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

# stage -> (module, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "prepare": ("conveyor.trainer.data.prepare", "materialise the dataset split and statistics once"),
    "train": ("conveyor.trainer.train", "train a model (under torchrun for more than one process)"),
    "command": (
        "conveyor.trainer.user_loop",
        "run spec.training.command under torchrun and record its result",
    ),
    "evaluate": ("conveyor.trainer.evaluate", "evaluate a model directory on the test split"),
    "ensemble": ("conveyor.trainer.ensemble", "combine model directories into an ensemble"),
    "serve": ("conveyor.trainer.serve", "serve a model over the Open Inference Protocol v2"),
}


def stage_module(name: str) -> ModuleType:
    module_name = STAGES[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise SystemExit(
                f"error: stage {name!r} is not available in this build ({module_name})"
            ) from error
        raise


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m conveyor.trainer", description=__doc__.split("\n")[0])
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    chosen = argv[0] if argv and argv[0] in STAGES else None
    for name, (_, summary) in STAGES.items():
        stage_parser = stages.add_parser(name, help=summary, description=summary)
        if name == chosen:
            stage_module(name).add_arguments(stage_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from conveyor.trainer.config import EXIT_INVALID_INPUT, ConfigError
    from conveyor.trainer.data import DataError
    from conveyor.trainer.usercode import activate_code

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        activate_code()
        return int(stage_module(args.stage).run(args))
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_INVALID_INPUT


if __name__ == "__main__":
    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a rank under torchrun: see process_exit
        from conveyor.trainer.process_exit import exit_without_teardown

        exit_without_teardown(status)
    sys.exit(status)

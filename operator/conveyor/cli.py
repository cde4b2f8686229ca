"""The `conveyor` command: run a pipeline locally, validate manifests, apply one with its code to a
cluster, render what the operator would create, print the CRD, run the operator.

Each subcommand is a module in `conveyor.commands` with `register(subparsers)` (cheap: argparse only)
and the work behind it imported lazily, so `conveyor validate` and `conveyor operator` never load torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Module names under conveyor.commands, in the order `conveyor --help` lists them.
COMMANDS = ("run", "status", "validate", "apply", "render", "crd", "operator", "logs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conveyor",
        description="Run a TrainingPipeline: prepare, tune, train, evaluate, ensemble, serve.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"conveyor.commands.{name}").register(subparsers)
    importlib.import_module("conveyor.devcluster.cli").add_parser(subparsers)  # dev-cluster up|down|status
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

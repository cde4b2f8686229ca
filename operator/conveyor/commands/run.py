"""`conveyor run -f pipeline.yaml`: the whole pipeline on this machine with local processes."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("run", help="run a pipeline on this machine")
    parser.add_argument("-f", "--filename", required=True, help="TrainingPipeline manifest (YAML)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    raise NotImplementedError("conveyor run is being written")

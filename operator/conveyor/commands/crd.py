"""`conveyor crd`: print the TrainingPipeline CustomResourceDefinition generated from the models."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "crd",
        help="print the TrainingPipeline CRD (YAML)",
        description="Print the CRD generated from the models.",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from conveyor.operator.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0

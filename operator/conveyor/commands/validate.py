"""`conveyor validate -f FILE...`: check manifests with the rules the API server applies (same messages)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="validate TrainingPipeline manifests",
        description="Validate manifests; prints OK or one line per problem (field path: message).",
    )
    parser.add_argument(
        "-f", "--filename", action="append", required=True, help="manifest (YAML); repeatable"
    )
    parser.add_argument("extra", nargs="*", metavar="FILE", help="more manifests")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from conveyor.operator.api.resource import ManifestError, load_manifest

    failed = False
    for path in [*args.filename, *args.extra]:
        try:
            pipelines = load_manifest(path) if path != "-" else load_manifest(sys.stdin.read())
        except FileNotFoundError:
            print(f"{path}: no such file", file=sys.stderr)
            failed = True
        except ManifestError as error:
            for field, message in error.problems:
                print(f"{path}: {field}: {message}" if field else f"{path}: {message}", file=sys.stderr)
            failed = True
        else:
            names = ", ".join(p.name for p in pipelines)
            print(f"{path}: OK ({names})")
    return 1 if failed else 0

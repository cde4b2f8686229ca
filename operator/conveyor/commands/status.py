"""`conveyor status RUN_DIR`: what a local run did — stages, trials, best, test metrics, endpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show a pipeline's stages, trials, metrics and endpoint")
    parser.add_argument("target", help="a local run directory (./runs/<name>)")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from rich.console import Console

    from conveyor.operator import views
    from conveyor.operator.localrun import STATUS_FILE, load_pipeline, load_status

    console = Console()
    root = Path(args.target)
    if not (root / STATUS_FILE).exists():
        console.print(f"[red]{root} is not a run directory (no {STATUS_FILE}); try ./runs/<name>[/red]")
        return 2
    status = load_status(root)
    if args.output == "json":
        print(json.dumps(status.to_wire(), indent=2))
        return 0
    pipeline = load_pipeline(root)
    name = pipeline.metadata.name or root.name
    console.print(views.live(name, status, pipeline.spec.task.metric))
    for part in views.summary(name, status, str(root.resolve()))[1:]:
        console.print(part)
    return 0

"""`conveyor status RUN_DIR|NAME`: what a pipeline did — stages, trials, best, test metrics, endpoint.

A local run directory (one holding status.json, as `conveyor run` writes) shows that run; anything
else is read as a TrainingPipeline's name on the cluster of the current kubeconfig. Both render the
same views (`conveyor.operator.views`), built from status alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show a pipeline's stages, trials, metrics and endpoint")
    parser.add_argument("target", help="a local run directory (./runs/<name>) or a TrainingPipeline name")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.add_argument("-n", "--namespace", help="cluster: default is the kubeconfig context's namespace")
    parser.add_argument("--kubeconfig", help="cluster: default $KUBECONFIG or ~/.kube/config")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from rich.console import Console

    from conveyor.operator import views
    from conveyor.operator.localrun import STATUS_FILE, load_pipeline, load_status

    console = Console()
    root = Path(args.target)
    if not (root / STATUS_FILE).exists():
        if "/" in args.target or root.exists():
            console.print(f"[red]{root} is not a run directory (no {STATUS_FILE}); try ./runs/<name>[/red]")
            return 2
        return cluster_status(args, console)
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


def cluster_status(args: argparse.Namespace, console: object) -> int:
    """The TrainingPipeline `args.target` as the cluster has it."""
    from rich.console import Console

    from conveyor.operator import views
    from conveyor.operator.api.status import PipelineStatus
    from conveyor.operator.kubernetes.cluster import ClusterError, read_pipeline

    assert isinstance(console, Console)
    try:
        body = read_pipeline(args.target, args.namespace, args.kubeconfig)
    except ClusterError as error:
        console.print(f"[red]{error}[/red]")
        return 1
    status = PipelineStatus.model_validate(body.get("status") or {})
    if args.output == "json":
        print(json.dumps(status.to_wire(), indent=2))
        return 0
    objective = ((body.get("spec") or {}).get("task") or {}).get("objective") or {}
    name = args.target
    console.print(views.live(name, status, objective.get("metric", "objective")))
    for part in views.summary(name, status)[1:]:
        console.print(part)
    if status.reason and status.phase == "Failed":
        console.print(f"[red]{status.reason}[/red]: {status.message or ''}")
    return 0

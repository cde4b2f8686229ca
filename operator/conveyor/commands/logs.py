"""`conveyor logs NAME [--stage S] [--trial N]`: the logs of a pipeline's pods, for people.

Logs are for reading only: nothing Conveyor decides is parsed from them (results travel through
termination messages and the progress endpoint). Without a filter, every workload's pods are shown,
oldest first; `--trial 3` means trial-0003, `--stage tune` every trial.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="show the logs of a pipeline's pods",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="TrainingPipeline name")
    parser.add_argument("--stage", choices=["prepare", "tune", "train", "evaluate", "ensemble", "serve"])
    parser.add_argument("--trial", type=int, help="trial number")
    parser.add_argument("--workload", help="workload name, e.g. evaluate-model")
    parser.add_argument("--tail", type=int, help="last N lines per pod")
    parser.add_argument("-n", "--namespace")
    parser.add_argument("--kubeconfig")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import sys

    from conveyor.operator.kubernetes import builders
    from conveyor.operator.kubernetes.cluster import ClusterError, pod_log, pods_of

    workload = args.workload or (f"trial-{args.trial:04d}" if args.trial is not None else None)
    try:
        api, ns, pods = pods_of(args.name, args.namespace, args.kubeconfig, workload)
    except ClusterError as error:
        print(f"conveyor logs: {error}", file=sys.stderr)
        return 1
    if args.stage:
        pods = [p for p in pods if p["metadata"].get("labels", {}).get(builders.LABEL_STAGE) == args.stage]
    if not pods:
        print(f"conveyor logs: no pods of {args.name} match", file=sys.stderr)
        return 1
    pods.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""))
    for pod in pods:
        name = pod["metadata"]["name"]
        for container in pod["spec"]["containers"]:
            print(f"==> {name}/{container['name']} <==")
            try:
                print(pod_log(api, ns, name, container["name"], args.tail), end="")
            except ClusterError as error:
                print(f"({error})")
    return 0

"""``conveyor dev-cluster up|down|status``: the test control plane, in the background, for people.

``up`` starts etcd, the Kubernetes control plane, KWOK GPU nodes and the local node as detached
processes with their state in ``~/.cache/conveyor/dev-cluster`` (``--state-dir``), and prints the
``export KUBECONFIG=...`` line. ``status`` reports the processes and nodes; ``down`` stops them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from conveyor.devcluster.cluster import Cluster, ClusterConfig, cache_root, default_bin_dir, missing_binaries


def default_state_dir() -> Path:
    return cache_root() / "dev-cluster"


def add_parser(subparsers: Any) -> None:
    """Register ``dev-cluster`` on the ``conveyor`` command's subparsers."""
    p = subparsers.add_parser(
        "dev-cluster",
        help="start/stop a local Kubernetes control plane with simulated GPU nodes (no Docker)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--state-dir", type=Path, default=None, help="default: ~/.cache/conveyor/dev-cluster")
    p.add_argument("--bin-dir", type=Path, default=None, help="default: scripts/build-control-plane's output")
    p.add_argument("--gpu-nodes", type=int, default=4)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu-product", default="NVIDIA-H100-80GB-HBM3")
    p.add_argument(
        "--no-local-node",
        action="store_true",
        help="only simulated (KWOK) nodes; they are tainted nvidia.com/gpu, so pods that ask for no GPU "
        "then need the toleration (conveyor.devcluster.kwok.SIMULATED)",
    )
    p.add_argument("--local-node-gpus", type=int, default=0, help="nvidia.com/gpu the local node advertises")
    p.add_argument(
        "--kueue",
        action="store_true",
        help="also run Kueue: ClusterQueue `conveyor` with every GPU as quota, LocalQueue default/conveyor "
        "(set spec.scheduling.queueName)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    state_dir = (args.state_dir or default_state_dir()).expanduser().resolve()
    if args.action == "up":
        return up(args, state_dir)
    if args.action == "down":
        return down(state_dir)
    return status(state_dir)


def _attached(state_dir: Path) -> Cluster | None:
    if not (state_dir / "state.json").exists():
        return None
    return Cluster.attach(state_dir)


def up(args: argparse.Namespace, state_dir: Path) -> int:
    existing = _attached(state_dir)
    if existing and all(existing.running().values()):
        print(
            f"dev-cluster already running ({state_dir}); `conveyor dev-cluster down` to stop it",
            file=sys.stderr,
        )
        print(f"export KUBECONFIG={existing.kubeconfig}")
        return 0
    bin_dir = args.bin_dir or default_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        print(
            f"missing binaries in {bin_dir}: {', '.join(missing)}; run scripts/build-control-plane",
            file=sys.stderr,
        )
        return 1
    config = ClusterConfig(
        state_dir=state_dir,
        bin_dir=bin_dir,
        gpu_nodes=args.gpu_nodes,
        gpus_per_node=args.gpus_per_node,
        gpu_product=args.gpu_product,
        local_node=not args.no_local_node,
        local_node_gpus=args.local_node_gpus,
        kueue=args.kueue,
    )
    cluster = Cluster(config)
    cluster.start()
    print(
        f"dev-cluster up in {cluster.startup_seconds:.1f}s: {cluster.api_url}, "
        f"{args.gpu_nodes} GPU nodes x {args.gpus_per_node} nvidia.com/gpu"
        + ("" if args.no_local_node else ", local node conveyor-local")
        + (", Kueue (LocalQueue default/conveyor)" if args.kueue else "")
        + f"; logs in {cluster.log_dir}",
        file=sys.stderr,
    )
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    print(f"export PATH={bin_dir}:$PATH  # kubectl, helm of the same version", file=sys.stderr)
    return 0


def down(state_dir: Path) -> int:
    cluster = _attached(state_dir)
    if cluster is None:
        print(f"no dev-cluster in {state_dir}", file=sys.stderr)
        return 0
    cluster.stop()
    print(f"dev-cluster stopped ({state_dir})", file=sys.stderr)
    return 0


def status(state_dir: Path) -> int:
    cluster = _attached(state_dir)
    if cluster is None:
        print(f"no dev-cluster in {state_dir}")
        return 1
    running = cluster.running()
    for name, alive in running.items():
        print(f"{name:26} {'running' if alive else 'STOPPED'}")
    print(f"apiserver {cluster.api_url}\nexport KUBECONFIG={cluster.kubeconfig}")
    if running.get("kube-apiserver"):
        from kubernetes import client

        core: Any = client.CoreV1Api(cluster.api())
        for node in core.list_node().items:
            ready = {c.type: c.status for c in node.status.conditions or []}.get("Ready")
            gpus = (node.status.allocatable or {}).get("nvidia.com/gpu", "0")
            print(f"node {node.metadata.name:20} Ready={ready} nvidia.com/gpu={gpus}")
    return 0 if all(running.values()) else 1

"""`conveyor operator`: run the Kubernetes operator against the current kubeconfig (or in-cluster).

This is exactly what the Helm chart's Deployment runs. Cluster-wide by default; `--namespace` (once or
more) watches only those namespaces, which the chart's namespaced RBAC mode needs. `--leader-elect` lets
several replicas run: only the holder of the Lease `--leader-election-id` in
`--leader-election-namespace` reconciles (conveyor.operator.kubernetes.leader).
"""

from __future__ import annotations

import argparse
import os
import socket
import uuid
from pathlib import Path

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "operator", help="run the Kubernetes operator", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env = os.environ.get
    parser.add_argument("--kubeconfig", default=env("KUBECONFIG") or None, help="default: in-cluster")
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch only this namespace (repeatable)"
    )
    parser.add_argument(
        "--image", default=env("CONVEYOR_TRAINER_IMAGE"), help="default trainer image for pipelines"
    )
    parser.add_argument("--image-pull-policy", default=env("CONVEYOR_IMAGE_PULL_POLICY"))
    parser.add_argument(
        "--progress-url", default=env("CONVEYOR_PROGRESS_URL"),
        help="URL pods POST epoch events to (this operator's progress Service); unset: no live progress",
    )
    parser.add_argument("--progress-port", type=int, default=8081)
    parser.add_argument(
        "--progress-tls-secret",
        help="NAMESPACE/NAME of the Secret holding the progress endpoint's CA (created if missing); "
        "required with an https --progress-url, which the endpoint then serves",
    )
    parser.add_argument(
        "--progress-advertise-url", default=env("CONVEYOR_PROGRESS_ADVERTISE_URL"),
        help="this replica's own progress endpoint, advertised on the Lease while it leads so standbys "
        "forward pods' events to it (default: $POD_IP, port and scheme of the progress URL)",
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="0 disables /metrics")
    parser.add_argument("--health-port", type=int, default=8082, help="0 disables /healthz")
    parser.add_argument(
        "--resync", type=float, default=300.0, help="seconds between safety-net looks at active pipelines"
    )
    parser.add_argument("--workers", type=int, default=16, help="pipelines reconciled concurrently")
    election = parser.add_argument_group("leader election (several replicas, one reconciling)")
    election.add_argument(
        "--leader-elect", action="store_true", help="reconcile only while holding the Lease"
    )
    election.add_argument(
        "--leader-election-namespace", default=env("POD_NAMESPACE"),
        help="the Lease's namespace (default: $POD_NAMESPACE, else the in-cluster service account's)",
    )
    election.add_argument("--leader-election-id", default="conveyor-operator", help="the Lease's name")
    election.add_argument(
        "--identity", default=None, help="this replica's holder identity (default: hostname_<random>)"
    )
    election.add_argument("--lease-duration", type=float, default=15.0, help="seconds a claim lasts")
    election.add_argument(
        "--renew-deadline", type=float, default=10.0,
        help="seconds the leader keeps leading without a renewal",
    )
    election.add_argument(
        "--retry-period", type=float, default=2.0, help="seconds between looks at the Lease"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import logging

    from conveyor.operator.kubernetes import builders, leader
    from conveyor.operator.kubernetes.operator import OperatorConfig, run

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    https = bool(args.progress_url) and args.progress_url.startswith("https://")
    if https != bool(args.progress_url and args.progress_tls_secret):
        raise SystemExit("an https --progress-url and --progress-tls-secret go together")
    candidacy = None
    if args.leader_elect:
        namespace = args.leader_election_namespace or (
            IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.exists() else None
        )
        if not namespace:
            raise SystemExit("--leader-elect needs --leader-election-namespace outside a cluster")
        candidacy = leader.Candidacy(
            namespace,
            args.leader_election_id,
            args.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
            leader.Timings(args.lease_duration, args.renew_deadline, args.retry_period),
            advertise_url(
                args.progress_advertise_url, os.environ.get("POD_IP"), args.progress_port, https
            )
            if args.progress_url
            else None,
        )
    config = OperatorConfig(
        namespaces=tuple(args.namespace),
        image=args.image or builders.DEFAULT_IMAGE,
        image_pull_policy=args.image_pull_policy,
        progress_url=args.progress_url or None,
        progress_port=args.progress_port,
        progress_tls_secret=args.progress_tls_secret if https else None,
        metrics_port=args.metrics_port or None,
        health_port=args.health_port or None,
        resync_seconds=args.resync,
        workers=args.workers,
        kubeconfig=args.kubeconfig,
        leader_election=candidacy,
    )
    run(config)
    return 0


def advertise_url(explicit: str | None, pod_ip: str | None, port: int, https: bool = False) -> str | None:
    """Where this replica's progress endpoint is reachable from the other replicas: the flag, else the
    pod's IP (the chart sets POD_IP from the downward API), else nowhere (standbys answer 503)."""
    if explicit:
        return explicit
    if not pod_ip:
        return None
    scheme = "https" if https else "http"
    return f"{scheme}://[{pod_ip}]:{port}" if ":" in pod_ip else f"{scheme}://{pod_ip}:{port}"

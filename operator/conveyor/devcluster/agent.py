"""The node agent process: registers the local node, keeps it alive, runs its pods (local kubelet)
and provisions PersistentVolumes. ``python -m conveyor.devcluster.agent --state-dir ... --kubeconfig ...``;
SIGTERM stops the pods' processes and exits."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from kubernetes import client
from kubernetes import config as kconfig

from conveyor.devcluster import node
from conveyor.devcluster.local_kubelet import LocalKubelet
from conveyor.devcluster.logserver import serve_logs
from conveyor.devcluster.provisioner import Provisioner

log = logging.getLogger("conveyor.devcluster.agent")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="conveyor.devcluster.agent")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node-name", default="conveyor-local")
    p.add_argument("--pod-python", default=sys.executable)
    p.add_argument("--interval", type=float, default=0.25)
    p.add_argument(
        "--gpus", type=int, default=0, help="nvidia.com/gpu the local node advertises (none attached)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    api = kconfig.new_client_from_config(config_file=args.kubeconfig)
    version = client.VersionApi(api).get_code().git_version
    kubelet = LocalKubelet(api, args.node_name, args.state_dir, args.pod_python)
    pki = args.state_dir / "pki"

    def running(ns: str, pod: str) -> bool:
        return any(r.ns == ns and r.pod_name == pod and r.is_alive() for r in list(kubelet.runs.values()))

    _, port = serve_logs(kubelet.pods_dir, pki / "apiserver.crt", pki / "apiserver.key", running)
    node.register(client.CoreV1Api(api), args.node_name, version, kubelet_port=port, gpus=args.gpus)
    provisioner = Provisioner(api, args.state_dir / "volumes")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    last_beat = 0.0
    log.info("node agent ready: node %s", args.node_name)
    try:
        while not stop.is_set():
            try:
                if time.monotonic() - last_beat > 10:
                    node.heartbeat(api, args.node_name)
                    last_beat = time.monotonic()
                provisioner.sync()
                kubelet.sync()
            except Exception:
                log.exception("sync failed")
            stop.wait(args.interval)
    finally:
        kubelet.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

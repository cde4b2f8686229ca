"""Operator latency: time from creating a TrainingPipeline to its first Job, under a burst of N
concurrent pipelines, and the operator's memory (issue 5 targets: p99 <= 2 s over 200, <= 300 MB).

Runs on the real local control plane (`conveyor.devcluster`, KWOK GPU nodes, no local node): helm
installs the chart (operator replicas 0), the operator runs as a process with the chart's
ServiceAccount token (as in tests/e2e/test_operator_kwok.py), N copies of the reference pipeline are
created at once from a thread pool, and a watch on Jobs records when each pipeline's first Job
appears. Both timestamps are taken in this process, on the same clock. Also reported: when the API
server's watch delivered each new pipeline (no operator can act sooner) and when its first status
showed (the operator writes it on the pipeline's second step, after the Job).

    .venv/bin/python benchmarks/operator_apply_to_job.py --pipelines 200
    .venv/bin/python benchmarks/operator_apply_to_job.py --pipelines 50 --workers 8   # ablation

No peer runs here: Kubeflow Trainer and Katib need container images, which this machine cannot run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (clock ticks from /proc/<pid>/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipelines", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16, help="operator --workers")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "out" / "operator_apply_to_job.json"
    )
    args = parser.parse_args()

    from kubernetes import client, watch

    from conveyor.devcluster.cluster import Cluster, ClusterConfig, default_bin_dir

    state = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    bin_dir = default_bin_dir()
    with Cluster(ClusterConfig(state_dir=state, bin_dir=bin_dir, local_node=False)) as cluster:
        kubeconfig = str(cluster.kubeconfig)
        kubectl, helm = str(bin_dir / "kubectl"), str(bin_dir / "helm")
        release = "conveyor-system"
        subprocess.run(
            [
                helm,
                "--kubeconfig",
                kubeconfig,
                "install",
                "conveyor",
                str(REPO / "charts" / "conveyor"),
                "-n",
                release,
                "--create-namespace",
                "--set",
                "replicaCount=0",
            ],
            check=True,
            capture_output=True,
        )
        token = subprocess.run(
            [kubectl, "--kubeconfig", kubeconfig, "-n", release, "create", "token", "conveyor"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        admin = yaml.safe_load(Path(kubeconfig).read_text())
        sa_config = state / "sa.kubeconfig"
        sa_config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": admin["clusters"],
                    "users": [{"name": "sa", "user": {"token": token}}],
                    "contexts": [
                        {"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": "sa"}}
                    ],
                    "current-context": "sa",
                }
            )
        )
        api = cluster.api()
        core: Any = client.CoreV1Api(api)
        custom: Any = client.CustomObjectsApi(api)
        ns = f"bench-{uuid.uuid4().hex[:5]}"
        core.create_namespace({"metadata": {"name": ns}})
        core.create_namespaced_persistent_volume_claim(
            ns,
            {
                "metadata": {"name": "conveyor-artifacts"},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
            },
        )
        import socket
        import urllib.request

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            metrics_port = sock.getsockname()[1]
        log = (state / "operator.log").open("wb")
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor.cli",
                "operator",
                "--kubeconfig",
                str(sa_config),
                "--namespace",
                ns,
                "--metrics-port",
                str(metrics_port),
                "--health-port",
                "0",
                "--workers",
                str(args.workers),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(5)  # let kopf list and start its watches (nothing to synchronise on from outside)
        idle_rss = rss_mb(operator.pid)[0]

        manifest = yaml.safe_load((REPO / "manifests" / "examples" / "digits.yaml").read_text())
        manifest["spec"]["scheduling"] = {"annotations": {"conveyor.dev/sim-delay": "1h"}}
        created: dict[str, float] = {}
        first_job: dict[str, float] = {}
        done = threading.Event()

        def watch_jobs() -> None:
            batch: Any = client.BatchV1Api(api)
            stream = watch.Watch()
            for event in stream.stream(batch.list_namespaced_job, ns, timeout_seconds=int(args.timeout)):
                labels = event["object"].metadata.labels or {}
                name = labels.get("conveyor.dev/pipeline")
                if name and name not in first_job:
                    first_job[name] = time.monotonic()
                if len(first_job) >= args.pipelines:
                    stream.stop()
            done.set()

        pipeline_seen: dict[str, float] = {}
        status_seen: dict[str, float] = {}

        def watch_pipelines() -> None:
            # When the API server's watch delivers each new pipeline (the operator cannot start before
            # it: the server's share of the latency) and when its first status shows.
            stream = watch.Watch()
            group = ("conveyor.dev", "v1alpha1", ns, "trainingpipelines")
            listing = stream.stream(
                custom.list_namespaced_custom_object, *group, timeout_seconds=int(args.timeout)
            )
            for event in listing:
                name = event["object"]["metadata"]["name"]
                pipeline_seen.setdefault(name, time.monotonic())
                if event["object"].get("status"):
                    status_seen.setdefault(name, time.monotonic())
                if len(status_seen) >= args.pipelines:
                    stream.stop()

        threading.Thread(target=watch_pipelines, daemon=True).start()
        watcher = threading.Thread(target=watch_jobs, daemon=True)
        watcher.start()
        time.sleep(1)

        def create(i: int) -> None:
            body = json.loads(json.dumps(manifest))
            body["metadata"] = {"name": f"p{i:04d}", "namespace": ns}
            created[f"p{i:04d}"] = time.monotonic()
            custom.create_namespaced_custom_object("conveyor.dev", "v1alpha1", ns, "trainingpipelines", body)

        burst_start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(args.pipelines)))
        burst_seconds = time.monotonic() - burst_start
        done.wait(args.timeout)
        deadline = time.monotonic() + 30
        while len(status_seen) < args.pipelines and time.monotonic() < deadline:
            time.sleep(0.2)
        current, peak = rss_mb(operator.pid)
        operator_cpu = cpu_seconds(operator.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
        reconciles = {
            line.split()[0]: float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith(
                (
                    "conveyor_reconciles_total",
                    "conveyor_reconcile_seconds_sum",
                    "conveyor_reconcile_seconds_count",
                    "conveyor_api_errors_total",
                )
            )
        }
        load = Path("/proc/loadavg").read_text().split()[:3]
        operator.terminate()
        operator.wait(30)

    latencies = [first_job[n] - created[n] for n in created if n in first_job]
    delivered = [pipeline_seen[n] - created[n] for n in created if n in pipeline_seen]
    reported = [status_seen[n] - created[n] for n in created if n in status_seen]
    result = {
        "pipelines": args.pipelines,
        "operator_workers": args.workers,
        "with_first_job": len(latencies),
        "create_burst_seconds": round(burst_seconds, 2),
        "apply_to_first_job_seconds": {
            "p50": round(percentile(latencies, 50), 3),
            "p99": round(percentile(latencies, 99), 3),
            "max": round(max(latencies), 3),
            "mean": round(statistics.mean(latencies), 3),
        }
        if latencies
        else None,
        "apply_to_pipeline_watch_event_seconds": {
            "p50": round(percentile(delivered, 50), 3),
            "p99": round(percentile(delivered, 99), 3),
        }
        if delivered
        else None,
        "apply_to_first_status_seconds": {
            "p50": round(percentile(reported, 50), 3),
            "p99": round(percentile(reported, 99), 3),
        }
        if reported
        else None,
        "operator_cpu_seconds": round(operator_cpu, 1),
        "operator_metrics": reconciles,
        "load_average": load,
        "operator_rss_mb": {"idle": round(idle_rss, 1), "after": round(current, 1), "peak": round(peak, 1)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if len(latencies) == args.pipelines else 1


if __name__ == "__main__":
    sys.exit(main())

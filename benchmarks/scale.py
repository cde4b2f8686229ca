"""Operator scale (issue 11 item 4): N small pipelines applied at once on 200+ KWOK GPU nodes, for
several N in one invocation: apply-to-first-Job p50/p99, time until all finish, the operator's peak RSS
and CPU, and the API requests it made per pipeline (targets: p99 <= 5 s, RSS <= 500 MB, requests per
pipeline flat as N grows).

Each N gets a fresh local control plane (`conveyor.devcluster`, `--nodes` KWOK GPU nodes of 8 GPUs;
the node agent only provisions the artifacts claim, as every pod goes to KWOK), so no N inherits
another's objects. helm installs the chart with operator replicas 0 (its RBAC) and ONE `conveyor
operator` process runs with the chart ServiceAccount's token and the chart's defaults (16 workers,
resync 300 s, no leader election), as in benchmarks/operator_apply_to_job.py.
Each pipeline is the chaos batch's pipeline (`tests.helpers.chaos.manifest`: prepare, `--trials`
trials, training, evaluation; no serving) whose pods KWOK ends by itself after `--pod-seconds` with a
trainer's result, so every pipeline must end Succeeded.

Measured per N, on this process's clock unless said:
- apply -> first Job: from the create call of a pipeline to its first Job on a watch (as
  operator_apply_to_job.py does);
- all finished: from the first create to the poll (every 2 s) that sees every pipeline Succeeded/Failed;
- operator RSS (peak of 0.2 s samples of its process tree with psutil, and the kernel's VmHWM) and CPU
  seconds (user + system of the tree);
- API requests: the API server's own count. A FlowSchema matches the operator's ServiceAccount alone
  (same priority level as the default `service-accounts` schema, so nothing is throttled differently)
  and `apiserver_flowcontrol_dispatched_requests_total` for it is read before the burst and after all
  finished (watches included; startup requests before the burst are reported apart). Requests the API
  server rejected (429) are `apiserver_flowcontrol_rejected_requests_total`, reported too, and so is
  every flow schema's request rate over the run (the controller manager's, the scheduler's...): the
  other clients that share the API server and may bound how fast the pipelines finish.

    .venv/bin/python benchmarks/scale.py                          # N = 100, 300, 1000 on 200 nodes
    .venv/bin/python benchmarks/scale.py --counts 20 --nodes 200  # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.operator_apply_to_job import percentile  # noqa: E402  (from the repository root)
from tests.helpers import chaos  # noqa: E402
from tests.helpers.operator_bed import (  # noqa: E402
    CHART,
    OperatorProcess,
    free_port,
    namespace_with_artifacts,
    sa_kubeconfig,
    sh,
    unwind_on_sigterm,
)

from conveyor.devcluster.pytest_plugin import wait_for  # noqa: E402

RELEASE = "conveyor-system"
FLOW_SCHEMA = "conveyor-operator-scale"
TERMINAL = ("Succeeded", "Failed")


def flow_schema() -> dict[str, Any]:
    """Requests of the chart's ServiceAccount (the operator's identity), on the priority level the
    default `service-accounts` schema gives them, under a name of their own to be counted by."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": FLOW_SCHEMA},
        "spec": {
            "matchingPrecedence": 500,
            "priorityLevelConfiguration": {"name": "workload-low"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": "conveyor", "namespace": RELEASE},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                            "clusterScope": True,
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


def apiserver_counts(kubectl: list[str]) -> dict[str, float]:
    """The operator's dispatched and rejected requests so far (the API server's /metrics)."""
    text = sh(*kubectl, "get", "--raw", "/metrics").stdout
    counts = {"dispatched": 0.0, "rejected": 0.0, "longrunning_pipeline_watches": 0.0}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        value = float(line.rsplit(" ", 1)[1]) if " " in line else 0.0
        if line.startswith("apiserver_flowcontrol_dispatched_requests_total{"):
            # Every client's share, by flow schema: who else loads the API server during the run.
            schema = line.split('flow_schema="', 1)[1].split('"', 1)[0]
            counts[f"schema:{schema}"] = counts.get(f"schema:{schema}", 0.0) + value
        if f'flow_schema="{FLOW_SCHEMA}"' in line:
            if line.startswith("apiserver_flowcontrol_dispatched_requests_total{"):
                counts["dispatched"] += value
            elif line.startswith("apiserver_flowcontrol_rejected_requests_total{"):
                counts["rejected"] += value
        elif line.startswith("apiserver_longrunning_requests{") and 'resource="trainingpipelines"' in line:
            counts["longrunning_pipeline_watches"] += value
    return counts


class TreeSampler:
    """Peak RSS and CPU seconds of a process and its descendants, sampled every `period` s."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.period = period
        self.peak_rss = 0
        self.cpu = 0.0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        import psutil

        rss, cpu = 0, 0.0
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                rss += process.memory_info().rss
                times = process.cpu_times()
                cpu += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        self.peak_rss = max(self.peak_rss, rss)
        self.cpu = max(self.cpu, cpu)

    def _run(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                self.sample()
            except Exception:  # the operator exited: the last sample stands
                return

    def vm_hwm_mb(self) -> float:
        """The kernel's peak RSS of the operator process itself."""
        for line in Path(f"/proc/{self.root.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.sample()
        self.stopped.set()


class FirstJobs:
    """When this process's watch first saw a Job of each pipeline (label conveyor.dev/pipeline). The
    events stay JSON: thousands arrive during a burst, in the process that also runs the creates."""

    def __init__(self, api: Any, namespace: str, expected: int, timeout: float) -> None:
        self.seen: dict[str, float] = {}
        self.all_seen = threading.Event()
        self.api, self.namespace, self.expected, self.timeout = api, namespace, expected, timeout
        from kubernetes import client

        # Listed before the creates: the watch resumes from here, so no Job event is missed.
        self.batch: Any = client.BatchV1Api(api)
        listing: Any = self.batch.list_namespaced_job(namespace)
        self.resource_version = listing.metadata.resource_version
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        from kubernetes import watch

        batch, resource_version = self.batch, self.resource_version
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and len(self.seen) < self.expected:
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    batch.list_namespaced_job,
                    self.namespace,
                    resource_version=resource_version,
                    timeout_seconds=60,
                    deserialize=False,  # a V1Job model would cost ~0.7 ms an event
                ):
                    metadata = event["object"]["metadata"]
                    resource_version = metadata["resourceVersion"]
                    name = (metadata.get("labels") or {}).get(chaos.LABEL_PIPELINE)
                    if name and name not in self.seen:
                        self.seen[name] = time.monotonic()
                    if len(self.seen) >= self.expected:
                        stream.stop()
            except Exception:  # the watch expired or broke: resume from the last version seen
                time.sleep(0.5)
        self.all_seen.set()


def measure(count: int, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """One fresh cluster, one operator, `count` pipelines at once; the measurements."""
    from kubernetes import client

    from conveyor.devcluster.cluster import Cluster, ClusterConfig, default_bin_dir

    load_before = os.getloadavg()
    state = Path(tempfile.mkdtemp(prefix=f"conveyor-scale-{count}-"))
    bin_dir = default_bin_dir()
    config = ClusterConfig(
        state_dir=state,
        bin_dir=bin_dir,
        gpu_nodes=args.nodes,
        owner_pid=os.getpid(),
        start_timeout=600.0,
    )
    with unwind_on_sigterm(), Cluster(config) as cluster:
        up = cluster.startup_seconds
        log(f"N={count}: cluster with {args.nodes} KWOK nodes up in {up:.1f} s ({state})")
        kubeconfig, helm = cluster.kubeconfig, str(bin_dir / "helm")
        kubectl = [str(bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig)]
        sh(helm, "--kubeconfig", str(kubeconfig), "install", "conveyor", str(CHART), "-n", RELEASE,
           "--create-namespace", "--set", "replicaCount=0")  # fmt: skip
        subprocess.run(
            [*kubectl, "apply", "-f", "-"], input=json.dumps(flow_schema()), text=True, check=True,
            capture_output=True,
        )  # fmt: skip
        token = sa_kubeconfig(kubeconfig, kubectl[0], RELEASE, state / "sa.kubeconfig")
        api = cluster.api()
        custom: Any = client.CustomObjectsApi(api)
        namespace = namespace_with_artifacts(client.CoreV1Api(api), f"scale-{uuid.uuid4().hex[:5]}")

        before_start = apiserver_counts(kubectl)
        operator = OperatorProcess(
            token,
            namespace,
            state,
            "operator",
            ["--workers", str(args.workers), "--resync", str(args.resync)],
            free_port(),
        )
        operator.start()
        assert operator.proc is not None
        sampler = TreeSampler(operator.proc.pid)
        try:
            # Ready when its TrainingPipeline watch is open at the API server and its own count of
            # requests has stopped moving (the initial lists and watches are done).
            wait_for(
                lambda: (
                    apiserver_counts(kubectl)["longrunning_pipeline_watches"]
                    > before_start["longrunning_pipeline_watches"]
                ),
                120,
                "the operator's TrainingPipeline watch",
            )
            previous = [-1.0]

            def settled() -> bool:
                now = apiserver_counts(kubectl)["dispatched"]
                same, previous[0] = now == previous[0], now
                return same

            wait_for(settled, 60, "the operator's start-up requests to settle", interval=1.0)
            idle_rss = sampler.root.memory_info().rss / 2**20
            before = apiserver_counts(kubectl)

            plan = chaos.Plan(
                pipelines=count, trials=args.trials, parallelism=1, seconds=args.pod_seconds,
                gate_failing_every=0,
            )  # fmt: skip
            bodies = [chaos.manifest(plan, i, namespace) for i in range(count)]
            first_jobs = FirstJobs(api, namespace, count, args.timeout)
            created: dict[str, float] = {}

            def create(body: dict[str, Any]) -> None:
                created[body["metadata"]["name"]] = time.monotonic()
                custom.create_namespaced_custom_object(
                    chaos.GROUP, chaos.VERSION, namespace, chaos.PLURAL, body
                )

            start = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(create, bodies))
            burst = time.monotonic() - start
            log(f"N={count}: {count} creates in {burst:.1f} s")

            phases: Counter[str] = Counter()

            def all_finished() -> bool:
                items = custom.list_namespaced_custom_object(
                    chaos.GROUP, chaos.VERSION, namespace, chaos.PLURAL
                )["items"]
                phases.clear()
                phases.update((i.get("status") or {}).get("phase", "-") for i in items)
                return sum(phases[p] for p in TERMINAL) == count

            last_report = [start]

            def progress() -> bool:
                done = all_finished()
                if time.monotonic() - last_report[0] > 30:
                    last_report[0] = time.monotonic()
                    log(f"N={count}: {time.monotonic() - start:.0f} s, phases {dict(phases)}")
                return done

            finished = True
            try:
                wait_for(progress, args.timeout, f"all {count} pipelines to finish", interval=2.0)
            except Exception as error:  # report what was reached; the exit status says it failed
                finished = False
                log(f"N={count}: {error}")
            all_seconds = time.monotonic() - start
            first_jobs.all_seen.wait(5)
            sampler.stop()
            after = apiserver_counts(kubectl)
            metrics = {
                name: operator.metric(name)
                for name in (
                    "conveyor_reconciles_total",
                    "conveyor_reconcile_seconds_sum",
                    "conveyor_api_errors_total",
                )
            }
            hwm = sampler.vm_hwm_mb()
        finally:
            sampler.stopped.set()
            operator.kill()

    latencies = [first_jobs.seen[n] - created[n] for n in created if n in first_jobs.seen]
    requests = after["dispatched"] - before["dispatched"]
    return {
        "pipelines": count,
        "kwok_nodes": args.nodes,
        "operator": f"1 process, --workers {args.workers} --resync {args.resync}, no leader election",
        "create_burst_seconds": round(burst, 2),
        "with_first_job": len(latencies),
        "apply_to_first_job_seconds": {
            "p50": round(percentile(latencies, 50), 3),
            "p99": round(percentile(latencies, 99), 3),
            "max": round(max(latencies), 3),
        }
        if latencies
        else None,
        "all_finished": finished,
        "all_finished_seconds": round(all_seconds, 1),
        "phases": dict(phases),
        "operator_rss_mb": {
            "idle": round(idle_rss, 1),
            "peak_tree_sampled": round(sampler.peak_rss / 2**20, 1),
            "peak_vmhwm": round(hwm, 1),
        },
        "operator_cpu_seconds": round(sampler.cpu, 1),
        "api_requests": {
            "startup": before["dispatched"] - before_start["dispatched"],
            "run": requests,
            "per_pipeline": round(requests / count, 1),
            "rejected_429": after["rejected"] - before["rejected"],
            "per_second_by_flow_schema": {
                key.removeprefix("schema:"): round((after[key] - before.get(key, 0.0)) / all_seconds, 1)
                for key in sorted(after)
                if key.startswith("schema:")
            },
        },
        "operator_metrics": metrics,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def table(results: list[dict[str, Any]]) -> str:
    header = (
        "| N | first Job p50 / p99 / max s | all finished s | RSS peak MB (idle) | CPU s "
        "| API requests / pipeline | 429s |"
    )
    rows = [header, "|---|---|---|---|---|---|---|"]
    for r in results:
        latency = r["apply_to_first_job_seconds"] or {"p50": "-", "p99": "-", "max": "-"}
        rows.append(
            f"| {r['pipelines']} | {latency['p50']} / {latency['p99']} / {latency['max']} "
            f"| {r['all_finished_seconds']}{'' if r['all_finished'] else ' (timed out)'} "
            f"| {r['operator_rss_mb']['peak_tree_sampled']} ({r['operator_rss_mb']['idle']}) "
            f"| {r['operator_cpu_seconds']} | {r['api_requests']['per_pipeline']} "
            f"| {int(r['api_requests']['rejected_429'])} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 300, 1000], help="pipelines per run")
    parser.add_argument("--nodes", type=int, default=200, help="KWOK GPU nodes (8 GPUs each)")
    parser.add_argument("--trials", type=int, default=1, help="tuning.trials of each pipeline")
    parser.add_argument("--pod-seconds", type=float, default=1.0, help="how long KWOK runs each pod")
    parser.add_argument("--workers", type=int, default=16, help="operator --workers (the chart's default)")
    parser.add_argument("--resync", type=float, default=300, help="operator --resync (the chart's default)")
    parser.add_argument("--timeout", type=float, default=1800, help="per N, for all pipelines to finish")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "scale.json")
    args = parser.parse_args()
    if min(args.counts) < 1 or args.nodes < 1 or args.trials < 1 or args.workers < 1:
        parser.error("--counts, --nodes, --trials and --workers must be at least 1")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: list[dict[str, Any]] = []
    for count in args.counts:
        results.append(measure(count, args, log))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"argv": sys.argv, "results": results}, indent=2) + "\n")
        log(json.dumps(results[-1]))
    print(table(results))
    return 0 if all(r["all_finished"] and r["with_first_job"] == r["pipelines"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Chaos on the test bed, shared by `benchmarks/chaos.py` (the measured run) and
`tests/e2e/test_chaos.py` (its small CI form), so both inject the same faults and judge the same
invariants.

A batch of pipelines runs on KWOK (every pod ends by itself after `seconds` with a trainer's result,
through `spec.scheduling.annotations`) under two `conveyor operator --leader-elect` replicas, while a
seeded schedule, at random moments:

- SIGKILLs the replica holding the Lease and starts a fresh one in its place (as a Deployment would);
  any replica that exits on its own is replaced too, and counted;
- evicts a Running pod of a pipeline (Eviction API: a disruption, which the Jobs' pod failure policy
  ignores, so the pod is recreated and the pipeline's outcome must not change);
- deletes a KWOK node that runs pipeline pods (PodGC fails its pods with a DisruptionTarget);
- restarts the API server in place (`Cluster.restart_apiserver`).

Then every pipeline must reach the phase its spec implies (gate passes: Succeeded; gate above the
simulated accuracy: Failed/GateFailed) with exactly `tuning.trials` distinct trials, all Succeeded
with their result (value) in status; every Job name must have been created once (a Job watch records
every uid), with no trial Job beyond the trial's recorded attempt; and once the pipelines are deleted,
no child (Job, pod, Service, Deployment, PVC, ConfigMap) may remain, by label or owner reference.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.devcluster import kwok
from tests.helpers.operator_bed import (
    SIM_DELAY,
    SIM_EXIT,
    SIM_MESSAGE,
    OperatorProcess,
    pipeline_manifest,
    start_replica,
)

GROUP, VERSION, PLURAL = "conveyor.dev", "v1alpha1", "trainingpipelines"
LABEL_PIPELINE = "conveyor.dev/pipeline"
LABEL_WORKLOAD = "conveyor.dev/workload"
LABEL_ATTEMPT = "conveyor.dev/attempt"
ACCURACY = 0.95  # what every simulated trainer reports
FAULTS = ("leader_kill", "pod_eviction", "node_removal", "apiserver_restart")


@dataclass
class Plan:
    """What one chaos run does: the batch, the faults (how many of each kind) and the seed."""

    pipelines: int = 20
    trials: int = 3
    parallelism: int = 2
    seconds: float = 8.0  # how long KWOK runs each pod
    gate_failing_every: int = 5  # every n-th pipeline has a gate above ACCURACY (0: none)
    leader_kills: int = 10
    pod_evictions: int = 6
    node_removals: int = 1
    apiserver_restarts: int = 1
    gap: tuple[float, float] = (1.0, 6.0)  # seconds between faults, uniform
    lease: float = 4.0
    seed: int = 7
    timeout: float = 900.0  # for the batch to finish, and again for deletion


def result_message() -> str:
    """A trainer's result that serves every stage: prepare, trials, training and evaluation."""
    metrics = {m: ACCURACY for m in ("accuracy", "precision", "recall", "f1", "rocAuc")}
    result = {
        "event": "result",
        "status": "succeeded",
        "epochsRun": 30,
        "bestEpoch": 28,
        "objective": {"metric": "accuracy", "value": ACCURACY},
        "metrics": {**metrics, "loss": 1 - ACCURACY},
    }
    return json.dumps(result, separators=(",", ":"))


def manifest(plan: Plan, index: int, namespace: str) -> dict[str, Any]:
    """Pipeline `index` of the batch: no ensemble and no serving (KWOK pods of a Deployment would be
    ended by the same annotations), gate at 0.9, or at 0.99 for every `gate_failing_every`-th."""
    body = pipeline_manifest(f"chaos-{index:03d}", namespace, ensemble=None, serving=None)
    spec = body["spec"]
    annotations = {SIM_DELAY: f"{int(plan.seconds * 1000)}ms", SIM_EXIT: "0", SIM_MESSAGE: result_message()}
    spec["scheduling"] = {"annotations": annotations, **kwok.SIMULATED}
    spec["tuning"].update({"trials": plan.trials, "parallelism": plan.parallelism, "seed": index})
    spec["resources"].update({"workers": 1})
    failing = plan.gate_failing_every and (index + 1) % plan.gate_failing_every == 0
    spec["evaluation"]["gate"] = {"metric": "accuracy", "min": 0.99 if failing else 0.9}
    return body


def expected_outcome(body: dict[str, Any]) -> tuple[str, str | None]:
    """(phase, reason) the pipeline must end in, from its gate and the simulated accuracy."""
    return (
        ("Succeeded", None)
        if body["spec"]["evaluation"]["gate"]["min"] <= ACCURACY
        else ("Failed", "GateFailed")
    )


class JobLedger:
    """Every Job uid ever seen per Job name in one namespace (list, then watch; again after the API
    server went away), with its pipeline, workload and attempt labels."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.uids: dict[str, set[str]] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _record(self, job: Any) -> None:
        with self.lock:
            self.uids.setdefault(job.metadata.name, set()).add(job.metadata.uid)
            self.labels[job.metadata.name] = dict(job.metadata.labels or {})

    def _run(self) -> None:
        from kubernetes import client, watch

        batch: Any = client.BatchV1Api(self.api)
        while not self.stopped.is_set():
            try:
                listing = batch.list_namespaced_job(self.namespace)
                for job in listing.items:
                    self._record(job)
                stream = watch.Watch()
                for event in stream.stream(
                    batch.list_namespaced_job,
                    self.namespace,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=60,
                ):
                    self._record(event["object"])
                    if self.stopped.is_set():
                        stream.stop()
            except Exception:  # the API server restarted, or the watch expired: list again
                self.stopped.wait(0.5)

    def of(self, pipeline: str) -> dict[str, tuple[int, dict[str, str]]]:
        """Job name -> (uids seen, labels) for one pipeline's Jobs."""
        with self.lock:
            return {
                name: (len(self.uids[name]), labels)
                for name, labels in self.labels.items()
                if labels.get(LABEL_PIPELINE) == pipeline
            }


class Replicas:
    """`count` operator replicas kept running (leader election on the release's Lease)."""

    def __init__(
        self, token: Path, namespace: str, release: str, workdir: Path, plan: Plan, api: Any
    ) -> None:
        self.token, self.namespace, self.release, self.workdir = token, namespace, release, workdir
        self.plan = plan
        self.api = api
        self.serial = 0
        self.live: dict[str, OperatorProcess] = {}
        self.all: list[OperatorProcess] = []
        self.self_exits = 0

    def start(self) -> OperatorProcess:
        name = f"r{self.serial}"
        self.serial += 1
        process = start_replica(
            self.token, self.namespace, self.workdir, self.release, name, self.plan.lease, ["--workers", "8"]
        )
        self.live[name] = process
        self.all.append(process)
        return process

    def keep(self, count: int = 2) -> None:
        """Replace replicas that exited on their own (as a Deployment would), up to `count`."""
        for name, process in list(self.live.items()):
            if process.proc is not None and process.proc.poll() is not None:
                self.self_exits += 1
                del self.live[name]
        while len(self.live) < count:
            self.start()

    def holder(self) -> str:
        from kubernetes import client

        coordination: Any = client.CoordinationV1Api(self.api)
        lease = coordination.read_namespaced_lease("conveyor", self.release)
        return str(lease.spec.holder_identity or "")

    def kill_leader(self, wait: Callable[..., Any]) -> str:
        """SIGKILL the replica holding the Lease (once one of the live ones does) and start another."""
        leader = wait(lambda: (lambda h: h if h in self.live else None)(self.holder()), 120, "a live leader")
        process = self.live.pop(leader)
        assert process.proc is not None
        os.killpg(process.proc.pid, signal.SIGKILL)
        process.proc.wait()
        self.start()
        return str(leader)

    def stop(self) -> None:
        for process in self.all:
            process.kill()

    def log_counts(self) -> dict[str, int]:
        logs = [p.log.read_text(errors="replace") for p in self.all if p.log.exists()]
        return {
            "AlreadyExists": sum(log.count("AlreadyExists") for log in logs),
            "Traceback": sum(log.count("Traceback") for log in logs),
        }


@dataclass
class Report:
    plan: Plan
    faults: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    replicas_started: int = 0
    replica_self_exits: int = 0
    logs: dict[str, int] = field(default_factory=dict)

    def fault_counts(self) -> dict[str, int]:
        counts = Counter(f["kind"] for f in self.faults)
        return {kind: counts.get(kind, 0) for kind in FAULTS}

    def table(self) -> str:
        phases = Counter(
            f"{o['phase']}{'/' + o['reason'] if o.get('reason') else ''}" for o in self.outcomes.values()
        )
        rows = [
            ("pipelines", str(len(self.outcomes))),
            ("trials per pipeline", str(self.plan.trials)),
            *((f"faults: {k}", str(v)) for k, v in self.fault_counts().items()),
            (
                "replicas started / exited on their own",
                f"{self.replicas_started} / {self.replica_self_exits}",
            ),
            *((f"outcome: {k}", str(v)) for k, v in sorted(phases.items())),
            ("as expected", str(sum(o["as_expected"] for o in self.outcomes.values()))),
            ("trial attempts beyond 0 (retries)", str(sum(o["retries"] for o in self.outcomes.values()))),
            ("invariant violations", str(len(self.violations))),
            *((f"operator logs: {k}", str(v)) for k, v in self.logs.items()),
            *((f"time: {k} (s)", f"{v:.1f}") for k, v in self.seconds.items()),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.__dict__,
            "fault_counts": self.fault_counts(),
            "faults": self.faults,
            "outcomes": self.outcomes,
            "violations": self.violations,
            "seconds": self.seconds,
            "replicas_started": self.replicas_started,
            "replica_self_exits": self.replica_self_exits,
            "logs": self.logs,
        }


def check_pipeline(
    name: str, body: dict[str, Any], status: dict[str, Any], jobs: dict[str, tuple[int, dict[str, str]]]
) -> tuple[dict[str, Any], list[str]]:
    """The outcome of one finished pipeline and every invariant it breaks."""
    phase, reason = expected_outcome(body)
    planned = body["spec"]["tuning"]["trials"]
    trials = status.get("trials", [])
    problems: list[str] = []
    if status.get("phase") != phase or (reason and status.get("reason") != reason):
        problems.append(f"phase {status.get('phase')}/{status.get('reason')}, expected {phase}/{reason}")
    names = [t["name"] for t in trials]
    if sorted(names) != [f"trial-{n:04d}" for n in range(planned)]:
        problems.append(f"trials {sorted(names)}, expected exactly {planned}")
    if len({t["number"] for t in trials}) != len(trials):
        problems.append("duplicate trial numbers")
    for trial in trials:
        if trial["state"] != "Succeeded":
            problems.append(
                f"{trial['name']} {trial['state']} ({trial.get('reason')}: {trial.get('message')})"
            )
        elif trial.get("value") != ACCURACY:
            problems.append(f"{trial['name']} Succeeded without its result (value {trial.get('value')})")
    tuning = status.get("tuning") or {}
    if tuning.get("succeeded") != sum(t["state"] == "Succeeded" for t in trials):
        problems.append(f"tuning.succeeded {tuning.get('succeeded')} disagrees with the trials")
    attempts = {t["name"]: t.get("attempt", 0) for t in trials}
    for job, (uids, labels) in sorted(jobs.items()):
        if uids > 1:
            problems.append(f"Job {job} created {uids} times")
        workload, attempt = labels.get(LABEL_WORKLOAD, ""), int(labels.get(LABEL_ATTEMPT, "0"))
        if workload.startswith("trial-") and attempt > attempts.get(workload, -1):
            problems.append(
                f"Job {job}: attempt {attempt} of {workload} beyond status ({attempts.get(workload)})"
            )
    for trial in trials:
        if trial["state"] == "Succeeded":
            current = [
                j
                for j, (_, lb) in jobs.items()
                if lb.get(LABEL_WORKLOAD) == trial["name"]
                and int(lb.get(LABEL_ATTEMPT, "0")) == trial.get("attempt", 0)
            ]
            if not current:
                problems.append(
                    f"{trial['name']} Succeeded with no Job of its attempt {trial.get('attempt', 0)}"
                )
    outcome = {
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "trials": len(trials),
        "retries": sum(attempts.values()),
        "jobs": len(jobs),
        "as_expected": not problems,
    }
    return outcome, [f"{name}: {p}" for p in problems]


def children(api: Any, namespace: str, pipeline: str, uid: str) -> list[str]:
    """What of the pipeline is left in `namespace`: objects with its label or owned by it (or by its
    Jobs, for pods)."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    batch: Any = client.BatchV1Api(api)
    apps: Any = client.AppsV1Api(api)
    kinds = {
        "job": batch.list_namespaced_job,
        "pod": core.list_namespaced_pod,
        "svc": core.list_namespaced_service,
        "deploy": apps.list_namespaced_deployment,
        "pvc": core.list_namespaced_persistent_volume_claim,
        "cm": core.list_namespaced_config_map,
    }
    left = []
    for kind, lister in kinds.items():
        for obj in lister(namespace).items:
            owners = {ref.uid for ref in obj.metadata.owner_references or []}
            if (obj.metadata.labels or {}).get(LABEL_PIPELINE) == pipeline or uid in owners:
                left.append(f"{kind}/{obj.metadata.name}")
    return left


def evict_running_pod(api: Any, namespace: str, rng: random.Random) -> str | None:
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    pods = [
        p
        for p in core.list_namespaced_pod(namespace, label_selector=LABEL_PIPELINE).items
        if p.status.phase == "Running" and not p.metadata.deletion_timestamp
    ]
    if not pods:
        return None
    pod = rng.choice(sorted(pods, key=lambda p: p.metadata.name))
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=namespace))
    core.create_namespaced_pod_eviction(pod.metadata.name, namespace, body)
    return str(pod.metadata.name)


def remove_busiest_node(api: Any, namespace: str) -> tuple[str, int] | None:
    """Delete the KWOK node running the most pipeline pods; (node, pods on it)."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(namespace, label_selector=LABEL_PIPELINE).items
    load = Counter(p.spec.node_name for p in pods if p.status.phase == "Running" and p.spec.node_name)
    kwok_nodes = {
        n.metadata.name
        for n in core.list_node(label_selector=f"{kwok.NODE_LABEL}={kwok.NODE_LABEL_VALUE}").items
    }
    busiest = [(count, node) for node, count in load.items() if node in kwok_nodes]
    if not busiest:
        return None
    count, node = max(busiest)
    core.delete_node(node)
    return node, count


def add_node(api: Any, name: str) -> None:
    """A KWOK GPU node `name` again (the test bed's default shape), e.g. after a removal."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    node = kwok.gpu_node(name, 8, "NVIDIA-H100-80GB-HBM3")
    core.create_node(node)
    core.patch_node_status(name, {"status": node["status"]})


def retrying(call: Callable[[], Any], timeout: float = 120.0) -> Any:
    """`call()`, again while it raises (the API server may be restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def schedule(plan: Plan) -> list[str]:
    """The faults in the seeded order they happen."""
    kinds = (
        ["leader_kill"] * plan.leader_kills
        + ["pod_eviction"] * plan.pod_evictions
        + ["node_removal"] * plan.node_removals
        + ["apiserver_restart"] * plan.apiserver_restarts
    )
    random.Random(plan.seed).shuffle(kinds)
    return kinds


@contextlib.contextmanager
def replicas_of(
    token: Path, namespace: str, release: str, workdir: Path, plan: Plan, api: Any
) -> Iterator[Replicas]:
    replicas = Replicas(token, namespace, release, workdir, plan, api)
    replicas.keep()
    try:
        yield replicas
    finally:
        replicas.stop()


def run(
    cluster: Any,
    namespace: str,
    release: str,
    token: Path,
    workdir: Path,
    plan: Plan,
    wait: Callable[..., Any],
    progress: Callable[[str], None] = lambda line: None,
) -> Report:
    """Apply the batch, inject the scheduled faults while it runs, wait for it, judge it, delete it and
    judge what is left. `cluster` is a `conveyor.devcluster.Cluster` (for the API server restart)."""
    from kubernetes import client

    api = cluster.api()
    custom: Any = client.CustomObjectsApi(api)
    report = Report(plan)
    rng = random.Random(plan.seed)
    ledger = JobLedger(api, namespace)
    bodies = {b["metadata"]["name"]: b for b in (manifest(plan, i, namespace) for i in range(plan.pipelines))}
    t0 = time.monotonic()
    with replicas_of(token, namespace, release, workdir, plan, api) as replicas:
        uids: dict[str, str] = {}
        for name, body in bodies.items():
            created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            uids[name] = created["metadata"]["uid"]

        def statuses() -> dict[str, dict[str, Any]]:
            listing = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
            return {p["metadata"]["name"]: p.get("status") or {} for p in listing["items"]}

        def done() -> bool:
            return all(s.get("phase") in ("Succeeded", "Failed") for s in statuses().values())

        for kind in schedule(plan):
            deadline = time.monotonic() + rng.uniform(*plan.gap)
            while time.monotonic() < deadline:
                retrying(replicas.keep)
                time.sleep(0.2)
            at = round(time.monotonic() - t0, 1)
            detail: Any
            if kind == "leader_kill":
                detail = replicas.kill_leader(wait)
            elif kind == "pod_eviction":
                detail = wait(lambda: evict_running_pod(api, namespace, rng), 120, "a pod to evict")
            elif kind == "node_removal":
                detail = wait(lambda: remove_busiest_node(api, namespace), 120, "a node running pods")
            else:
                detail = round(cluster.restart_apiserver(), 1)
            report.faults.append({"at_s": at, "kind": kind, "detail": detail})
            progress(f"{at:7.1f}s {kind} {detail}")
        report.seconds["faults"] = time.monotonic() - t0

        deadline = time.monotonic() + plan.timeout
        while not retrying(done):
            if time.monotonic() > deadline:
                report.violations.append(f"batch not finished within {plan.timeout} s")
                break
            retrying(replicas.keep)
            time.sleep(1.0)
        report.seconds["batch"] = time.monotonic() - t0
        final = retrying(statuses)
        ledger_snapshot = {name: ledger.of(name) for name in bodies}
        for name, body in bodies.items():
            outcome, problems = check_pipeline(name, body, final.get(name, {}), ledger_snapshot[name])
            report.outcomes[name] = outcome
            report.violations += problems
        report.replicas_started = len(replicas.all)
        report.replica_self_exits = replicas.self_exits
        report.logs = replicas.log_counts()

        t1 = time.monotonic()
        for name in bodies:
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        left: dict[str, list[str]] = {}
        deadline = time.monotonic() + plan.timeout
        while True:
            left = {n: c for n in bodies if (c := children(api, namespace, n, uids[n]))}
            if not left or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        report.violations += [f"{n}: orphaned after deletion: {', '.join(c)}" for n, c in left.items()]
        report.seconds["garbage_collection"] = time.monotonic() - t1
    ledger.stopped.set()
    report.seconds["total"] = time.monotonic() - t0
    return report

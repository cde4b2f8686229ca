"""Operator high availability: hand-over time when the leader is SIGKILLed mid-sweep, and whether any
trial was duplicated or lost (issue 11).

Runs on the real local control plane (`conveyor.devcluster`, KWOK GPU nodes): helm installs the chart
(operator replicas 0: its RBAC, Lease Role included), and two `conveyor operator --leader-elect`
replicas run as processes with the chart ServiceAccount's token (as in tests/e2e/test_operator_ha.py).
Each round creates a batch of pipelines whose pods KWOK finishes by itself after `--trial-seconds`
with a trainer's result (the `conveyor.dev/sim-*` annotations through spec.scheduling.annotations),
waits until the leader has started trials, SIGKILLs it (or SIGTERMs it, `--signal term`) and starts
a fresh replica in its place, as a Deployment would. Measured from the kill, on this process's clock:

- lease: when a watch on the Lease shows the standby as holder;
- first reconcile: when the new leader's `conveyor_reconciles_total` (polled every 20 ms) first moves.

After each round every pipeline must have exactly `--trials` trials, all Succeeded, and one Job per
trial attempt; the replicas' logs must hold no AlreadyExists. Lease timings are the chart's defaults
(15/10/2 s) unless given.

    .venv/bin/python benchmarks/operator_failover.py --kills 10
    .venv/bin/python benchmarks/operator_failover.py --kills 10 --lease 4   # the tests' timings
    .venv/bin/python benchmarks/operator_failover.py --kills 5 --signal term
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.operator_bed import (  # noqa: E402  (the test bed's helpers, from the repository root)
    SIM_DELAY,
    SIM_EXIT,
    SIM_MESSAGE,
    OperatorProcess,
    cluster_with_chart,
    namespace_with_artifacts,
    pipeline_manifest,
    start_replica,
    trial_result,
)

RELEASE = "conveyor-system"


class LeaseWatch:
    """Every change of the Lease's holder, with the time this process saw it."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.changes: list[tuple[float, str]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        from kubernetes import client, watch

        coordination: Any = client.CoordinationV1Api(self.api)
        while True:
            stream = watch.Watch()
            try:
                for event in stream.stream(coordination.list_namespaced_lease, RELEASE, timeout_seconds=300):
                    if event["object"].metadata.name != "conveyor":
                        continue
                    who = event["object"].spec.holder_identity or ""
                    with self.changed:
                        if not self.changes or self.changes[-1][1] != who:
                            self.changes.append((time.monotonic(), who))
                            self.changed.notify_all()
            except Exception:  # the API server went away (the run is over) or closed the stream
                time.sleep(1.0)

    def holder(self) -> str:
        with self.changed:
            return self.changes[-1][1] if self.changes else ""

    def wait_for(self, who: set[str], since: float, timeout: float) -> float:
        """When a holder in `who` was first seen after `since`."""
        with self.changed:
            found = self.changed.wait_for(
                lambda: next((t for t, h in self.changes if t >= since and h in who), None), timeout
            )
        if found is None:
            raise TimeoutError(f"no holder among {sorted(who)} within {timeout} s")
        return float(found)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=10, help="rounds, one leader killed in each")
    parser.add_argument("--pipelines", type=int, default=3, help="pipelines per round")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--trial-seconds", type=float, default=4.0, help="how long KWOK runs each pod")
    parser.add_argument("--lease", type=float, default=15.0, help="lease s (renew deadline 2/3, retry 2/15)")
    parser.add_argument("--signal", choices=("kill", "term"), default="kill")
    parser.add_argument("--timeout", type=float, default=300.0, help="per round")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "operator_failover.json")
    args = parser.parse_args()
    spawned: list[OperatorProcess] = []
    try:
        return measure(args, spawned)
    finally:  # also when a round fails: no replica outlives its cluster
        for process in spawned:
            process.kill()


def measure(args: argparse.Namespace, spawned: list[OperatorProcess]) -> int:
    from kubernetes import client

    with cluster_with_chart("conveyor-failover-", RELEASE) as (cluster, state, token):
        api = cluster.api()
        core: Any = client.CoreV1Api(api)
        custom: Any = client.CustomObjectsApi(api)
        batch: Any = client.BatchV1Api(api)
        ns = namespace_with_artifacts(core, f"failover-{uuid.uuid4().hex[:5]}")
        timings = ["--renew-deadline", str(args.lease * 2 / 3), "--retry-period", str(args.lease * 2 / 15)]
        serial = iter(range(10_000))

        def replica() -> OperatorProcess:
            name = f"r{next(serial)}"
            process = start_replica(
                token, ns, state, RELEASE, name, args.lease, [*timings, "--workers", "16"]
            )
            spawned.append(process)
            return process

        leases = LeaseWatch(api)
        replicas = {p.log.stem: p for p in (replica(), replica())}
        leases.wait_for(set(replicas), 0.0, 60)

        result = {"status": "succeeded", **{k: v for k, v in trial_result(0.95).items() if k != "status"}}
        annotations = {
            SIM_DELAY: f"{int(args.trial_seconds * 1000)}ms",
            SIM_EXIT: "0",
            SIM_MESSAGE: json.dumps({"event": "result", **result}, separators=(",", ":")),
        }
        rounds: list[dict[str, Any]] = []
        for round_no in range(args.kills):
            names = [f"r{round_no:02d}-p{i}" for i in range(args.pipelines)]
            for name in names:
                body = pipeline_manifest(name, ns, scheduling={"annotations": annotations})
                body["spec"]["tuning"].update({"trials": args.trials, "parallelism": args.parallelism})
                body["spec"]["resources"].update({"workers": 1})
                custom.create_namespaced_custom_object(
                    "conveyor.dev", "v1alpha1", ns, "trainingpipelines", body
                )

            def statuses() -> dict[str, dict[str, Any]]:
                listing = custom.list_namespaced_custom_object(
                    "conveyor.dev", "v1alpha1", ns, "trainingpipelines"
                )
                return {p["metadata"]["name"]: p.get("status") or {} for p in listing["items"]}

            deadline = time.monotonic() + args.timeout
            while not any(len(statuses()[n].get("trials", [])) for n in names):  # mid-sweep
                if time.monotonic() > deadline:
                    print(json.dumps(statuses(), indent=1)[-3000:], *(p.tail() for p in replicas.values()))
                    raise TimeoutError("no trial started")
                time.sleep(0.2)
            leader_name = leases.holder()
            leader = replicas.pop(leader_name)
            (standby,) = replicas.values()
            killed = time.monotonic()
            if args.signal == "kill":
                os.killpg(leader.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            else:
                os.killpg(leader.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
            leased = leases.wait_for({standby.log.stem}, killed, args.timeout)
            while standby.metric("conveyor_reconciles_total") == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the new leader never reconciled")
                time.sleep(0.02)
            reconciled = time.monotonic()
            leader.proc.wait()  # type: ignore[union-attr]
            fresh = replica()
            replicas = {standby.log.stem: standby, fresh.log.stem: fresh}

            while not all(
                statuses()[n].get("tuning", {}).get("succeeded", 0)
                + statuses()[n].get("tuning", {}).get("failed", 0)
                >= args.trials
                for n in names
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"round {round_no}: sweeps did not finish")
                time.sleep(0.5)
            final = statuses()
            checks: dict[str, Any] = {}
            for n in names:
                trials = final[n].get("trials", [])
                jobs = sorted(
                    j.metadata.name
                    for j in batch.list_namespaced_job(ns, label_selector=f"conveyor.dev/pipeline={n}").items
                    if "-trial-" in j.metadata.name
                )
                expected_jobs = sorted(f"{n}-{t['name']}-{t.get('attempt', 0)}" for t in trials)
                checks[n] = {
                    "trials": len(trials),
                    "succeeded": sum(t["state"] == "Succeeded" for t in trials),
                    "distinct": len({t["name"] for t in trials}),
                    "retried_attempts": sum(t.get("attempt", 0) for t in trials),
                    "jobs_match_attempts": jobs == expected_jobs,
                }
            exact = all(
                c["trials"] == c["succeeded"] == c["distinct"] == args.trials and c["jobs_match_attempts"]
                for c in checks.values()
            )
            rounds.append(
                {
                    "round": round_no,
                    "killed": leader_name,
                    "new_leader": standby.log.stem,
                    "lease_s": round(leased - killed, 3),
                    "first_reconcile_s": round(reconciled - killed, 3),
                    "exact": exact,
                    "retried_attempts": sum(c["retried_attempts"] for c in checks.values()),
                    "pipelines": checks,
                }
            )
            print(json.dumps({k: v for k, v in rounds[-1].items() if k != "pipelines"}), flush=True)
            for n in names:  # the next round starts from a quiet namespace
                custom.delete_namespaced_custom_object("conveyor.dev", "v1alpha1", ns, "trainingpipelines", n)

        logs = [p.read_text() for p in sorted(state.glob("r*.log"))]
        already_exists = sum(log.count("AlreadyExists") for log in logs)
        tracebacks = sum(log.count("Traceback") for log in logs)
        lease_s = [r["lease_s"] for r in rounds]
        first_s = [r["first_reconcile_s"] for r in rounds]
        summary = {
            "kills": args.kills,
            "signal": args.signal,
            "timings_s": {
                "lease": args.lease,
                "renew_deadline": args.lease * 2 / 3,
                "retry": args.lease * 2 / 15,
            },
            "pipelines_per_round": args.pipelines,
            "trials_per_pipeline": args.trials,
            "lease_s": {"p50": statistics.median(lease_s), "max": max(lease_s), "min": min(lease_s)},
            "first_reconcile_s": {
                "p50": statistics.median(first_s),
                "p90": percentile(first_s, 90),
                "max": max(first_s),
                "min": min(first_s),
            },
            "all_rounds_exact": all(r["exact"] for r in rounds),
            "retried_attempts": sum(r["retried_attempts"] for r in rounds),
            "already_exists_in_logs": already_exists,
            "tracebacks_in_logs": tracebacks,
            "load_average": os.getloadavg(),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2))
        print(json.dumps(summary, indent=2))
        return 0 if summary["all_rounds_exact"] and not already_exists else 1


if __name__ == "__main__":
    raise SystemExit(main())

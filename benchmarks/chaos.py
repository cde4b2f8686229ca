"""Chaos, measured (issue 11): a batch of pipelines on the test bed while the operator leader is
SIGKILLed again and again, pipeline pods are evicted, a GPU node is deleted under running pods and the
API server is restarted; then every pipeline is judged and deleted, and what is left is counted.

Starts its own local control plane (`conveyor.devcluster`, KWOK GPU nodes), installs the chart with
operator replicas 0 (its RBAC and Lease Role) and runs two `conveyor operator --leader-elect` replicas
as processes with the chart ServiceAccount's token, as in tests/e2e/test_operator_ha.py. The batch, the
seeded fault schedule and the invariants are `tests.helpers.chaos` (shared with the CI test,
tests/e2e/test_chaos.py); see its docstring for what each fault does and what must hold. Prints a table
and writes every fault, outcome and violation to `--out`; exits 1 on any invariant violation.

    .venv/bin/python benchmarks/chaos.py                       # 20 pipelines, 10 leader kills
    .venv/bin/python benchmarks/chaos.py --pipelines 30 --leader-kills 15 --seed 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import chaos  # noqa: E402  (the test bed's helpers, from the repository root)
from tests.helpers.operator_bed import cluster_with_chart, namespace_with_artifacts  # noqa: E402

from conveyor.devcluster.pytest_plugin import wait_for  # noqa: E402

RELEASE = "conveyor-system"


def main() -> int:
    defaults = chaos.Plan()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipelines", type=int, default=defaults.pipelines)
    parser.add_argument("--trials", type=int, default=defaults.trials, help="tuning.trials of each")
    parser.add_argument("--parallelism", type=int, default=defaults.parallelism)
    parser.add_argument(
        "--pod-seconds", type=float, default=defaults.seconds, help="how long KWOK runs each pod"
    )
    parser.add_argument("--leader-kills", type=int, default=defaults.leader_kills)
    parser.add_argument("--pod-evictions", type=int, default=defaults.pod_evictions)
    parser.add_argument("--node-removals", type=int, default=defaults.node_removals)
    parser.add_argument("--apiserver-restarts", type=int, default=defaults.apiserver_restarts)
    parser.add_argument("--lease", type=float, default=defaults.lease, help="lease s (renew 3/4, retry 1/8)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--timeout", type=float, default=defaults.timeout, help="for the batch, and for GC")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "chaos.json")
    args = parser.parse_args()
    if args.pipelines < 1 or args.trials < 1 or args.parallelism < 1:
        parser.error("--pipelines, --trials and --parallelism must be at least 1")
    plan = chaos.Plan(
        pipelines=args.pipelines,
        trials=args.trials,
        parallelism=args.parallelism,
        seconds=args.pod_seconds,
        leader_kills=args.leader_kills,
        pod_evictions=args.pod_evictions,
        node_removals=args.node_removals,
        apiserver_restarts=args.apiserver_restarts,
        lease=args.lease,
        seed=args.seed,
        timeout=args.timeout,
    )
    report = measure(plan)
    print(report.table())
    for violation in report.violations:
        print("VIOLATION", violation)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {**report.as_dict(), "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    args.out.write_text(json.dumps(result, indent=2, default=str))
    return 1 if report.violations else 0


def measure(plan: chaos.Plan) -> chaos.Report:
    from kubernetes import client

    with cluster_with_chart("conveyor-chaos-", RELEASE) as (cluster, state, token):
        namespace = namespace_with_artifacts(client.CoreV1Api(cluster.api()), f"chaos-{uuid.uuid4().hex[:5]}")
        print(f"cluster up in {cluster.startup_seconds:.1f} s; logs in {state}", flush=True)
        return chaos.run(
            cluster, namespace, RELEASE, token, state, plan, wait_for, lambda line: print(line, flush=True)
        )


if __name__ == "__main__":
    raise SystemExit(main())

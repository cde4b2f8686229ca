"""Two operator replicas on the real control plane (chart RBAC, KWOK GPU nodes): only the Lease holder
reconciles, and a SIGKILLed leader is replaced by the standby while a sweep runs, with exactly the
requested trials, one Job per trial attempt and no AlreadyExists in either log; and an epoch event
POSTed to the standby's progress endpoint reaches the leader (which advertises it on the Lease).

Both replicas are `conveyor operator --leader-elect` processes with the chart ServiceAccount's token,
so a Lease permission missing from the chart's Role fails this test; the trainer is played through
the `conveyor.dev/sim-*` annotations as in test_operator_kwok.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.helpers.operator_bed import (
    TIMEOUT,
    TLS_SECRET,
    Cluster,
    OperatorProcess,
    pipeline_manifest,
    post_epoch,
    sa_kubeconfig,
    start_replica,
    trial_result,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def replicas(
    release: str, restricted: str, kubeconfig: Path, kubectl: str, tmp_path: Path
) -> Iterator[dict[str, OperatorProcess]]:
    token = sa_kubeconfig(kubeconfig, kubectl, release, tmp_path / "sa.kubeconfig")
    tls = f"{release}/{TLS_SECRET}"  # both replicas: certificates of the one CA
    made = {
        name: start_replica(token, restricted, tmp_path, release, name, tls_secret=tls) for name in ("a", "b")
    }
    try:
        yield made
    finally:
        for name, process in made.items():
            process.kill()
            print(f"--- replica {name}\n{process.tail()}")


def lease_holder(k8s_api: Any, release: str) -> str:
    lease: Any = client.CoordinationV1Api(k8s_api).read_namespaced_lease("conveyor", release)
    return str(lease.spec.holder_identity or "")


def leader_and_standby(
    replicas: dict[str, OperatorProcess], k8s_api: Any, release: str, wait_for: Callable[..., Any]
) -> tuple[OperatorProcess, OperatorProcess]:
    """The replica holding the Lease (once one does), and the other one."""
    first = wait_for(lambda: lease_holder(k8s_api, release), TIMEOUT, "a Lease holder")
    return replicas[first], replicas["b" if first == "a" else "a"]


def lease_annotations(k8s_api: Any, release: str) -> dict[str, str]:
    lease: Any = client.CoordinationV1Api(k8s_api).read_namespaced_lease("conveyor", release)
    return dict(lease.metadata.annotations or {})


def test_the_standby_forwards_epoch_events_to_the_leader(
    replicas: dict[str, OperatorProcess], release: str, k8s_api: Any, kube: Cluster
) -> None:
    """The progress Service may send a pod's POST to either replica: the standby passes it on to the
    endpoint on the Lease, the leader authenticates it (TokenReview) and keeps the epoch."""
    ns = kube.namespace
    leader, standby = leader_and_standby(replicas, k8s_api, release, kube.wait_for)
    advertised = f"https://127.0.0.1:{leader.progress_port}"
    ca = leader.ca()
    assert standby.ca() == ca  # one CA: whichever replica created the Secret, the other read it
    kube.wait_for(
        lambda: lease_annotations(k8s_api, release).get("conveyor.dev/progress-endpoint") == advertised,
        TIMEOUT,
        "the leader's progress endpoint on the Lease",
    )
    manifest = pipeline_manifest("fwd", ns, ensemble=None, serving=None)
    manifest["spec"]["tuning"].update({"trials": 1, "parallelism": 1})
    manifest["spec"]["training"]["epochs"] = 5
    kube.apply(manifest)
    kube.finish(kube.current_job("fwd", "prepare"), 1, {"status": "succeeded"})
    token = kube.progress_token(kube.current_job("fwd", "trial-0000"))

    event = {"event": "epoch", "epoch": 1, "epochs": 5, "metrics": {"accuracy": 0.91}}
    # 503 only until the standby has read the Lease since the leader advertised (one retry period)
    answer = kube.wait_for(
        lambda: (lambda code: code if code != 503 else None)(
            post_epoch(standby.progress_port, token, event, ca=ca)
        ),
        TIMEOUT,
        "the standby to forward",
    )
    assert answer == 202
    second = {**event, "epoch": 2, "metrics": {"accuracy": 0.92}}
    assert post_epoch(standby.progress_port, token, second, ca=ca) == 202
    assert post_epoch(standby.progress_port, "not-a-token", event, ca=ca) == 403  # the leader's verdict
    status = kube.wait_status("fwd", lambda s: s["trials"][0].get("epoch") == 2, "epochs of trial-0000")
    assert status["trials"][0]["values"] == [0.91, 0.92]
    assert leader.metric("conveyor_training_epochs_total") >= 2
    assert standby.metric("conveyor_training_epochs_total") == 0
    assert standby.metric("conveyor_reconciles_total") == 0


def test_standby_takes_over_from_a_killed_leader_mid_sweep(
    replicas: dict[str, OperatorProcess], release: str, k8s_api: Any, kube: Cluster
) -> None:
    ns = kube.namespace
    leader, standby = leader_and_standby(replicas, k8s_api, release, kube.wait_for)
    kube.apply(pipeline_manifest("ha", ns))

    kube.finish("ha-prepare-0", 1, {"status": "succeeded"})
    kube.wait_status("ha", lambda s: len(s.get("trials", [])) == 2, "2 running trials")
    kube.finish(kube.current_job("ha", "trial-0000"), 2, trial_result(0.93))
    kube.finish(kube.current_job("ha", "trial-0001"), 2, trial_result(0.96))
    kube.wait_status("ha", lambda s: s.get("tuning", {}).get("succeeded") == 2, "2 trials succeeded")
    kube.wait_job("ha-trial-0002-0")

    # only the leader has reconciled; the standby's watches ran but it queued nothing
    assert lease_holder(k8s_api, release) == leader.name
    assert leader.metric("conveyor_operator_leader") == 1 and leader.metric("conveyor_reconciles_total") > 0
    assert standby.metric("conveyor_operator_leader") == 0
    assert standby.metric("conveyor_reconciles_total") == 0

    leader.kill()
    kube.finish("ha-trial-0002-0", 2, trial_result(0.95))
    # liveness bound only (the hand-over time is measured in benchmarks/operator_failover.py)
    kube.wait_for(
        lambda: lease_holder(k8s_api, release) == standby.name, TIMEOUT, "the standby to take the Lease"
    )
    assert kube.wait_for(
        lambda: standby.metric("conveyor_operator_leader") == 1, TIMEOUT, "the standby to lead"
    )
    kube.wait_status("ha", lambda s: s.get("tuning", {}).get("succeeded") == 3, "trial-0002 absorbed")
    kube.finish(kube.current_job("ha", "trial-0003"), 2, trial_result(0.94))
    status = kube.wait_status("ha", lambda s: s.get("phase") == "Training", "phase Training")

    kube.assert_sweep_succeeded("ha", status, 4)
    assert standby.metric("conveyor_reconciles_total") > 0
    for process in replicas.values():
        log = process.log.read_text()
        assert "AlreadyExists" not in log, process.tail()
    assert "acquired lease" in standby.log.read_text()

"""A standby's progress endpoint forwards to the leader: the endpoint the leader advertises on its Lease
(written with every claim, dropped on release, read by the others), the forward decision, and a POST
to a standby server that reaches a leader server over real sockets, both serving HTTPS with
certificates of one CA and the standby verifying the leader's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from conveyor.cli import main
from conveyor.commands.operator import advertise_url
from conveyor.operator.kubernetes import statusserver as ss
from conveyor.operator.kubernetes.leader import ENDPOINT, Timings, advertised, claimed, released
from tests.helpers.operator_bed import free_port
from tests.helpers.operator_bed import post_epoch as post
from tests.unit.test_kubernetes_observe import LABELS, review_for

NOW = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
KEY = ("ml", "digits", "trial-0001", 1)


def lease(who: str | None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "conveyor", "namespace": "conveyor-system", "resourceVersion": "7"}
    if annotations is not None:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {"leaseDurationSeconds": 15}
    if who is not None:
        spec["holderIdentity"] = who
    return {"metadata": metadata, "spec": spec}


def test_a_claim_advertises_this_replicas_endpoint_and_keeps_other_annotations() -> None:
    current = lease("b", {ENDPOINT: "http://10.0.0.2:8081", "other": "kept"})
    body = claimed(current, "a", "conveyor-system", "conveyor", Timings(), NOW, "http://10.0.0.1:8081")
    assert body["metadata"]["annotations"] == {ENDPOINT: "http://10.0.0.1:8081", "other": "kept"}
    assert body["metadata"]["resourceVersion"] == "7"
    # a holder with nothing to advertise drops the previous holder's endpoint
    body = claimed(current, "a", "conveyor-system", "conveyor", Timings(), NOW)
    assert body["metadata"]["annotations"] == {"other": "kept"}
    assert "annotations" not in claimed(None, "a", "conveyor-system", "conveyor", Timings(), NOW)["metadata"]


def test_a_release_drops_the_endpoint() -> None:
    body = released(lease("a", {ENDPOINT: "http://10.0.0.1:8081", "other": "kept"}))
    assert body["metadata"]["annotations"] == {"other": "kept"}
    assert "annotations" not in released(lease("a", {ENDPOINT: "http://10.0.0.1:8081"}))["metadata"]


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (lease("b", {ENDPOINT: "http://10.0.0.2:8081/"}), "http://10.0.0.2:8081"),  # another leader's
        (lease("a", {ENDPOINT: "http://10.0.0.1:8081"}), None),  # this replica leads: serve, not forward
        (lease(None, {ENDPOINT: "http://10.0.0.2:8081"}), None),  # no holder: no leader to forward to
        (lease("b"), None),  # a leader that advertises nothing
        (lease("b", {ENDPOINT: "file:///etc/passwd"}), None),  # only http(s)
        (None, None),  # no Lease yet
    ],
)
def test_advertised(current: dict[str, Any] | None, expected: str | None) -> None:
    assert advertised(current, "a") == expected


@pytest.mark.parametrize(
    ("endpoint", "headers", "expected"),
    [
        ("http://10.0.0.2:8081", {}, "http://10.0.0.2:8081/v1/progress"),
        ("http://10.0.0.2:8081/", {"Authorization": "Bearer t"}, "http://10.0.0.2:8081/v1/progress"),
        (None, {}, None),  # no leader known: 503
        ("http://10.0.0.2:8081", {ss.FORWARDED: "1"}, None),  # already forwarded once: no loops
    ],
)
def test_forward_target(endpoint: str | None, headers: dict[str, str], expected: str | None) -> None:
    assert ss.forward_target(endpoint, headers) == expected


@pytest.mark.parametrize(
    ("explicit", "pod_ip", "https", "expected"),
    [
        ("http://127.0.0.1:9000", "10.0.0.1", False, "http://127.0.0.1:9000"),
        (None, "10.0.0.1", False, "http://10.0.0.1:8081"),
        (None, "fd00::1", False, "http://[fd00::1]:8081"),
        (None, "10.0.0.1", True, "https://10.0.0.1:8081"),  # TLS: the progress URL's scheme
        (None, "fd00::1", True, "https://[fd00::1]:8081"),
        (None, None, True, None),
    ],
)
def test_advertise_url(explicit: str | None, pod_ip: str | None, https: bool, expected: str | None) -> None:
    assert advertise_url(explicit, pod_ip, 8081, https) == expected


def test_a_standby_forwards_to_the_leader_and_answers_with_its_status(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Two progress servers on real sockets over TLS (each its own certificate from one CA): the
    standby (not accepting) passes the body and the Authorization header on to the leader, verifying
    the leader's certificate, and the leader authenticates it as usual."""
    reviews: list[str] = []

    def review(token: str) -> dict[str, Any]:
        reviews.append(token)
        return review_for("p-0") if token == "good" else {"authenticated": False}

    leader_port, standby_port = free_port(), free_port()
    store, standby_store = ss.ProgressStore(), ss.ProgressStore()
    endpoint: list[str | None] = [None]
    ca, ca_key = ss.new_ca(NOW)
    leader_tls = ss.tls_contexts(ca, ca_key, ["127.0.0.1"], NOW)
    standby_tls = ss.tls_contexts(ca, ca_key, ["127.0.0.1"], NOW)
    leader = ss.ProgressServer(store, review, lambda ns, name: {"metadata": {"labels": LABELS}})
    standby = ss.ProgressServer(
        standby_store,
        review,
        lambda ns, name: {"metadata": {"labels": LABELS}},
        accepting=lambda: False,
        leader_endpoint=lambda: endpoint[0],
        trust=standby_tls.client,
    )
    runners = [
        asyncio.run_coroutine_threadsafe(ss.serve(server, "127.0.0.1", port, tls.server), loop).result(10)
        for server, port, tls in ((leader, leader_port, leader_tls), (standby, standby_port, standby_tls))
    ]
    impostor_port = free_port()  # a server whose certificate another CA signed
    other_ca, other_key = ss.new_ca(NOW)
    impostor_tls = ss.tls_contexts(other_ca, other_key, ["127.0.0.1"], NOW)
    impostor = ss.ProgressServer(
        ss.ProgressStore(), review, lambda ns, name: {"metadata": {"labels": LABELS}}
    )
    runners.append(
        asyncio.run_coroutine_threadsafe(
            ss.serve(impostor, "127.0.0.1", impostor_port, impostor_tls.server), loop
        ).result(10)
    )
    try:
        event = {"event": "epoch", "epoch": 1, "epochs": 3, "metrics": {"accuracy": 0.5}}
        assert post(standby_port, "good", event, ca=ca) == 503  # no leader known yet
        endpoint[0] = f"https://127.0.0.1:{leader_port}"
        assert post(standby_port, "good", event, ca=ca) == 202
        assert post(standby_port, "bad", {**event, "epoch": 2}, ca=ca) == 403  # the leader's verdict
        assert [e.epoch for e in store.lookup(*KEY)] == [1]
        assert reviews == ["good", "bad"]  # reviewed once each, by the leader only
        assert standby_store.events == {}
        # a forwarded request is never forwarded again (two standbys cannot bounce it)
        assert post(standby_port, "good", event, {ss.FORWARDED: "1"}, ca=ca) == 503
        # a leader endpoint whose certificate the CA did not sign gets nothing (no token leaves)
        endpoint[0] = f"https://127.0.0.1:{impostor_port}"
        assert post(standby_port, "good", event, ca=ca) == 503
        assert reviews == ["good", "bad"]
        endpoint[0] = f"https://127.0.0.1:{free_port()}"  # the leader is gone: nobody listens there
        assert post(standby_port, "good", event, ca=ca) == 503
    finally:
        for runner in runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)


def test_a_standby_relays_the_leaders_stop_unchanged(loop: asyncio.AbstractEventLoop) -> None:
    """A pruned user loop whose POST lands on a standby still learns to stop: the standby answers
    with the leader's status and body, unchanged."""
    from tests.unit.test_kubernetes_observe import exchange

    leader_port, standby_port = free_port(), free_port()
    store = ss.ProgressStore()

    def pods(namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"labels": LABELS}}

    leader = ss.ProgressServer(store, lambda token: review_for("p-0"), pods)
    standby = ss.ProgressServer(
        ss.ProgressStore(),
        lambda token: review_for("p-0"),
        pods,
        accepting=lambda: False,
        leader_endpoint=lambda: f"http://127.0.0.1:{leader_port}",
    )
    runners = [
        asyncio.run_coroutine_threadsafe(ss.serve(server, "127.0.0.1", port), loop).result(10)
        for server, port in ((leader, leader_port), (standby, standby_port))
    ]
    try:
        event = {"event": "epoch", "epoch": 1, "epochs": 100, "step": 90, "metrics": {"accuracy": 0.5}}
        assert exchange(standby_port, event) == (202, {"accepted": True})
        store.ask_stop(*KEY)
        assert exchange(standby_port, {**event, "epoch": 2}) == exchange(leader_port, {**event, "epoch": 3})
        assert exchange(standby_port, {**event, "epoch": 4}) == (200, {"stop": True})
        assert [e.epoch for e in store.lookup(*KEY)] == [1, 2, 3, 4]
    finally:
        for runner in runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)


@pytest.mark.parametrize(
    "flags",
    [
        ["--progress-url", "https://conveyor-progress.sys.svc:8081"],  # https needs the CA's Secret
        ["--progress-url", "http://conveyor-progress.sys.svc:8081", "--progress-tls-secret", "sys/tls"],
    ],
)
def test_an_https_progress_url_and_the_tls_secret_go_together(flags: list[str]) -> None:
    with pytest.raises(SystemExit, match="go together"):
        main(["operator", *flags])

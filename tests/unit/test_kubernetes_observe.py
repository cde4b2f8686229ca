"""Table tests for the pure parts of the Kubernetes executor and the progress endpoint: Jobs and pods
(API dicts) -> WorkloadObservation (facts only: what they mean is the engine's), Deployment ->
ServingObservation, token identity and rate limits."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conveyor.operator.engine import EpochReport
from conveyor.operator.kubernetes import builders
from conveyor.operator.kubernetes import executor as ex
from conveyor.operator.kubernetes import statusserver as ss
from tests.helpers.kubernetes_objects import done, pod

RESULT = {"event": "result", "status": "succeeded", "objective": {"metric": "accuracy", "value": 0.97}}


def job(*conditions: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "digits-trial-0001-0"},
        "status": {
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [
                {"type": t, "status": "True", "reason": r, "lastTransitionTime": "2026-01-01T00:01:00Z"}
                for t, r in conditions
            ],
        },
    }


OK_MSG = json.dumps(RESULT)


@pytest.mark.parametrize(
    ("the_job", "pods", "state", "reason", "has_result"),
    [
        (None, [], "lost", None, False),
        (job(), [], "pending", None, False),
        (
            job(),
            [pod(0, "Pending", {"waiting": {"reason": "ImagePullBackOff"}})],
            "pending",
            "ImagePullBackOff",
            False,
        ),
        (
            job(),
            [pod(0, "Running", {"running": {}}), pod(1, "Running", {"running": {}})],
            "running",
            None,
            False,
        ),
        (
            job(),
            [pod(0, "Succeeded", done(0, OK_MSG)), pod(1, "Running", {"running": {}})],
            "running",
            None,
            True,
        ),
        (
            job(("Complete", "")),
            [pod(1, "Succeeded", done(0)), pod(0, "Succeeded", done(0, OK_MSG))],
            "succeeded",
            None,
            True,
        ),
        # Complete without a result: a fact; the engine makes it NoResult (test_executor_protocol).
        (job(("Complete", "")), [pod(0, "Succeeded", done(0))], "succeeded", None, False),
        # Complete, but rank 0's pod is gone with its result (evicted as it ended): lost, run again.
        (job(("Complete", "")), [pod(1, "Succeeded", done(0))], "lost", None, False),
        (
            job(("Failed", "BackoffLimitExceeded")),
            [pod(0, "Failed", done(137, "", "OOMKilled"))],
            "failed",
            "OOMKilled",
            False,
        ),
        (
            job(("Failed", "PodFailurePolicy")),
            [pod(0, "Failed", done(2, "bad column"))],
            "failed",
            "InvalidInput",
            False,
        ),
        (job(("Failed", "PodFailurePolicy")), [], "failed", "InvalidInput", False),  # pods already gone
        (
            job(("Failed", "BackoffLimitExceeded")),
            [pod(0, "Failed", done(134, OK_MSG))],  # crashed while exiting, after its result
            "failed",
            "ExitCode",
            True,
        ),
        (job(("Failed", "DeadlineExceeded")), [], "failed", "DeadlineExceeded", False),
    ],
)
def test_observe_job(
    the_job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    state: str,
    reason: str | None,
    has_result: bool,
) -> None:
    seen = ex.observe_job(the_job, pods, attempt=0)
    assert seen.state == state
    assert seen.reason == reason
    assert (seen.result is not None) is has_result
    if the_job is not None:
        assert seen.started_at is not None


def test_failure_message_names_the_exit_code() -> None:
    seen = ex.observe_job(job(("Failed", "PodFailurePolicy")), [pod(0, "Failed", done(2, "bad column"))], 0)
    assert seen.message == "container trainer exited with code 2: bad column"


@pytest.mark.parametrize(
    ("status", "ready"),
    [
        ({}, False),
        ({"readyReplicas": 2, "conditions": [{"type": "Available", "status": "True"}]}, True),
        ({"readyReplicas": 0, "conditions": [{"type": "Available", "status": "False"}]}, False),
    ],
)
def test_observe_deployment(status: dict[str, Any], ready: bool) -> None:
    deployment = {
        "spec": {
            "replicas": 2,
            "template": {"metadata": {"annotations": {"conveyor.dev/model": "ensemble"}}},
        },
        "status": status,
    }
    seen = ex.observe_deployment(deployment, "http://x")
    assert seen.ready is ready and seen.model == "ensemble"
    nothing = ex.observe_deployment(None, "http://x")  # nothing served: the engine starts serving again
    assert (nothing.ready, nothing.model) == (False, None)


def test_observe_jobs_finds_each_attempts_job_and_pods() -> None:
    current = job(("Complete", ""))
    current["metadata"]["name"] = builders.job_name("digits", "trial-0001", 1)
    older = job(("Failed", "BackoffLimitExceeded"))
    older["metadata"]["name"] = builders.job_name("digits", "trial-0001", 0)
    result_pod = pod(0, "Succeeded", done(0, OK_MSG))
    result_pod["metadata"]["labels"] = {"job-name": current["metadata"]["name"]}
    seen = ex.observe_jobs(
        "digits",
        [("trial-0001", 1), ("trial-0002", 0)],
        [older, current],
        [result_pod],
        lambda name, attempt: (EpochReport(attempt, {"accuracy": 0.9}),),
    )
    assert (seen["trial-0001"].state, seen["trial-0001"].attempt) == ("succeeded", 1)
    assert seen["trial-0001"].result == RESULT
    assert [e.epoch for e in seen["trial-0001"].epochs] == [1]
    assert seen["trial-0002"].state == "lost"


def review_for(pod_name: str | None, authenticated: bool = True) -> dict[str, Any]:
    extra = {"authentication.kubernetes.io/pod-name": [pod_name]} if pod_name else {}
    return {
        "authenticated": authenticated,
        "user": {"username": "system:serviceaccount:ml:default", "extra": extra},
    }


LABELS = {
    "conveyor.dev/pipeline": "digits",
    "conveyor.dev/workload": "trial-0001",
    "conveyor.dev/attempt": "1",
}


@pytest.mark.parametrize(
    ("review", "labels", "key"),
    [
        (review_for("p-0"), LABELS, ("ml", "digits", "trial-0001", 1)),
        (review_for("p-0", authenticated=False), LABELS, None),
        (review_for(None), LABELS, None),  # not a pod-bound token
        (review_for("p-0"), {"app": "other"}, None),  # not a Conveyor workload pod
    ],
)
def test_token_identity(review: dict[str, Any], labels: dict[str, str], key: ss.Key | None) -> None:
    server = ss.ProgressServer(
        ss.ProgressStore(), lambda _token: review, lambda ns, name: {"metadata": {"labels": labels}}
    )
    assert server.identify("token") == key
    assert server.identify("token") == key  # cached


def test_store_keeps_epochs_by_attempt_and_notifies() -> None:
    woken: list[tuple[str, str]] = []
    store = ss.ProgressStore(notify=lambda ns, p: woken.append((ns, p)))
    key = ("ml", "digits", "trial-0001", 0)
    for epoch in (2, 1, 2):
        store.add(key, {"event": "epoch", "epoch": epoch, "epochs": 5, "metrics": {"accuracy": epoch / 10}})
    store.add(key, {"event": "result"})  # ignored: results travel through termination messages
    assert [e.epoch for e in store.lookup("ml", "digits", "trial-0001", 0)] == [1, 2]
    assert store.lookup("ml", "digits", "trial-0001", 1) == ()
    assert woken == [("ml", "digits")] * 3
    store.forget("ml", "digits")
    assert store.lookup("ml", "digits", "trial-0001", 0) == ()


def test_rate_limit_bucket() -> None:
    bucket = ss.Bucket()
    taken = sum(bucket.take() for _ in range(100))
    assert ss.BURST <= taken <= ss.BURST + 2


def test_trainer_push_reaches_the_progress_endpoint(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's best-effort POST against the real endpoint; the token review is a stand-in
    function (the e2e test exercises the real TokenReview)."""
    import asyncio
    import socket
    import threading

    from conveyor.trainer import progress

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = ss.ProgressStore()
    server = ss.ProgressServer(
        store,
        lambda token: review_for("p-0") if token == "good" else {"authenticated": False},
        lambda ns, name: {"metadata": {"labels": LABELS}},
    )
    loop = asyncio.new_event_loop()
    runner = loop.run_until_complete(ss.serve(server, "127.0.0.1", port))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        token = tmp_path / "token"
        monkeypatch.setenv("CONVEYOR_PROGRESS_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("CONVEYOR_PROGRESS_TOKEN_FILE", str(token))
        token.write_text("bad")
        assert progress.push('{"event":"epoch","epoch":1,"metrics":{"accuracy":0.5}}') is False
        token.write_text("good")
        progress.emit(
            tmp_path / "model", {"event": "epoch", "epoch": 1, "epochs": 3, "metrics": {"accuracy": 0.5}}
        )
        assert [e.metrics["accuracy"] for e in store.lookup("ml", "digits", "trial-0001", 1)] == [0.5]
        monkeypatch.setenv("RANK", "1")  # only rank 0 reports
        assert progress.push('{"event":"epoch","epoch":2,"metrics":{}}') is False
        monkeypatch.setenv("CONVEYOR_PROGRESS_URL", "http://127.0.0.1:1")  # nobody listening: no error
        monkeypatch.setenv("RANK", "0")
        assert progress.push('{"event":"epoch","epoch":2,"metrics":{}}') is False
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def exchange(port: int, event: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST `event` as the trainer does (token "good"); the reply's status and JSON body."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{ss.PATH}",
        data=json.dumps(event).encode(),
        headers={"Authorization": "Bearer good", "Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read())


def test_the_endpoint_answers_a_stopped_attempts_posts_with_stop() -> None:
    """Once asked (the Kubernetes executor's `request_stop`), every POST of that attempt is answered
    {"stop": true} (200), asking again changes nothing, other attempts are not told, and the event is
    still kept (with its step); forgetting the pipeline forgets the ask."""
    import asyncio
    import threading

    from tests.helpers.operator_bed import free_port

    port = free_port()
    store = ss.ProgressStore()
    server = ss.ProgressServer(
        store, lambda token: review_for("p-0"), lambda ns, name: {"metadata": {"labels": LABELS}}
    )
    loop = asyncio.new_event_loop()
    runner = loop.run_until_complete(ss.serve(server, "127.0.0.1", port))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    event = {"event": "epoch", "epoch": 1, "epochs": 100, "step": 90, "maxSteps": 900, "metrics": {"loss": 1}}
    try:
        assert exchange(port, event) == (202, {"accepted": True})
        store.ask_stop("ml", "digits", "trial-0001", 0)  # another attempt (the pod's is 1)
        assert exchange(port, event) == (202, {"accepted": True})
        for _ in range(2):
            store.ask_stop("ml", "digits", "trial-0001", 1)
        assert exchange(port, {**event, "epoch": 2, "step": 180}) == (200, {"stop": True})
        assert exchange(port, {**event, "epoch": 3, "step": 270}) == (200, {"stop": True})
        reports = store.lookup("ml", "digits", "trial-0001", 1)
        assert [(r.epoch, r.step) for r in reports] == [(1, 90), (2, 180), (3, 270)]
        store.forget("ml", "digits")
        assert exchange(port, event) == (202, {"accepted": True})
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_the_kubernetes_executor_asks_the_endpoint_by_the_pipelines_label() -> None:
    """`request_stop` reaches the progress store under the key the endpoint derives from pod labels
    (a long pipeline name is shortened in its label); nothing is written to the cluster (the API
    client is absent: any call would fail)."""
    from tests.helpers.specs import make_spec

    store = ss.ProgressStore()
    shared = ex.KubernetesExecutor(ex.Api(client=None), progress=store.lookup, ask_stop=store.ask_stop)
    name = "a-pipeline-with-a-name-much-longer-than-a-label-value-may-be-at-all"
    owner = builders.Owner(name, "ml", "uid-1", make_spec())
    executor = shared.for_pipeline(owner, {"metadata": {"name": name, "namespace": "ml"}})
    executor.request_stop("trial-0003", 2)
    assert store.stops == {("ml", builders.label_value(name), "trial-0003", 2)}
    assert builders.label_value(name) != name

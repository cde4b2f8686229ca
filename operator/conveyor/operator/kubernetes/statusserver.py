"""The progress endpoint: live per-epoch events pushed by training pods to the operator.

Why a push endpoint: pruning and live status need every epoch within seconds, and the design rules out
sidecars, log scraping and any write access to the Kubernetes API from workload pods (Katib's metrics
collector pains, anchors §6 #8). Kubeflow Trainer's status server is the model:

- A pod POSTs one epoch event (the trainer's `progress.emit` JSON) to `POST /v1/progress` with
  `Authorization: Bearer <token>`, where the token is a projected service-account token for the
  audience `conveyor.dev` (mounted by `builders.progress_pieces`). The API server does not accept that
  audience, so the token is useless for anything but this endpoint.
- The operator verifies it with a TokenReview (audience `conveyor.dev`) and reads the pod's name from
  the review (`authentication.kubernetes.io/pod-name`); the pipeline, workload and attempt come from
  that pod's labels, never from the request, so a pod can only report for itself. Reviews are cached
  per token for a minute.
- Each pod is rate-limited (token bucket: 5 events/s, burst 20; 429 beyond) and bodies are capped
  at 16 KiB.
- Only the leader (leader election) keeps events; the progress Service spreads pods over every
  replica, so a standby forwards each POST (same body and Authorization header, a short timeout) to
  the endpoint the leader advertises on its Lease (`leader.advertised`, never an address from the
  request) and answers with the leader's status; the leader authenticates it as usual. No leader
  known, or the leader unreachable: 503, as is a forwarded request reaching a non-leader (no loops).

Events are kept in memory (`ProgressStore`) per (namespace, pipeline, workload, attempt); the engine
copies every epoch's objective into status on the next reconcile, so an operator restart loses at most
the epochs not yet absorbed, never a result: final results travel through the termination message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from conveyor.operator.engine.observations import EpochReport
from conveyor.operator.kubernetes import builders

log = logging.getLogger("conveyor.operator.progress")

MAX_BODY = 16 * 1024
RATE_PER_SECOND = 5.0
BURST = 20.0
REVIEW_TTL_SECONDS = 60.0
MAX_EPOCHS = 10_000
FORWARD_TIMEOUT_SECONDS = 3.0
FORWARDED = "X-Conveyor-Forwarded"  # set on a standby's forward: the receiver never forwards again
PATH = "/v1/progress"

Key = tuple[str, str, str, int]  # namespace, pipeline, workload, attempt


@dataclass
class ProgressStore:
    """Epoch reports by workload attempt; `notify` wakes the pipeline's reconcile; `measure` gets each
    epoch's throughput (namespace, pipeline, workload, samples/s or None), for the metrics."""

    events: dict[Key, dict[int, EpochReport]] = field(default_factory=dict)
    notify: Callable[[str, str], None] | None = None
    measure: Callable[[str, str, str, float | None], None] | None = None

    def add(self, key: Key, event: Mapping[str, Any]) -> None:
        if event.get("event") != "epoch" or not isinstance(event.get("epoch"), int):
            return
        metrics = {
            k: float(v) for k, v in (event.get("metrics") or {}).items() if isinstance(v, int | float)
        }
        epochs = event.get("epochs") if isinstance(event.get("epochs"), int) else None
        reports = self.events.setdefault(key, {})
        if len(reports) < MAX_EPOCHS:
            reports[int(event["epoch"])] = EpochReport(int(event["epoch"]), metrics, epochs)
        if self.measure is not None:
            rate = event.get("samplesPerSecond")
            self.measure(key[0], key[1], key[2], float(rate) if isinstance(rate, int | float) else None)
        if self.notify is not None:
            self.notify(key[0], key[1])

    def lookup(self, namespace: str, pipeline: str, workload: str, attempt: int) -> tuple[EpochReport, ...]:
        reports = self.events.get((namespace, pipeline, workload, attempt), {})
        return tuple(reports[e] for e in sorted(reports))

    def forget(self, namespace: str, pipeline: str) -> None:
        for key in [k for k in self.events if k[:2] == (namespace, pipeline)]:
            del self.events[key]


@dataclass
class Bucket:
    tokens: float = BURST
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.stamp) * RATE_PER_SECOND)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


Reviewer = Callable[[str], Mapping[str, Any] | None]  # token -> TokenReview status, or None
PodReader = Callable[[str, str], Mapping[str, Any] | None]  # (namespace, name) -> pod


def forward_target(leader_endpoint: str | None, headers: Mapping[str, str]) -> str | None:
    """Where a standby sends a POST it received: the leader's advertised endpoint, unless there is
    none or the request was itself forwarded (then 503)."""
    if not leader_endpoint or FORWARDED in headers:
        return None
    return leader_endpoint.rstrip("/") + PATH


@dataclass
class ProgressServer:
    store: ProgressStore
    review: Reviewer
    read_pod: PodReader
    reviews: dict[str, tuple[float, Key | None]] = field(default_factory=dict)
    buckets: dict[Key, Bucket] = field(default_factory=dict)
    accepting: Callable[[], bool] = lambda: True  # False on a standby replica (leader election)
    leader_endpoint: Callable[[], str | None] = lambda: None  # the leader's, from its Lease (standby)
    session: aiohttp.ClientSession | None = None

    def identify(self, token: str) -> Key | None:
        """The workload attempt a token belongs to (its pod's labels), or None if not authentic."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self.reviews.get(digest)
        if cached is not None and time.monotonic() - cached[0] < REVIEW_TTL_SECONDS:
            return cached[1]
        key = None
        status = self.review(token)
        if status and status.get("authenticated"):
            extra = (status.get("user") or {}).get("extra") or {}
            pods = extra.get("authentication.kubernetes.io/pod-name") or []
            username = (status.get("user") or {}).get("username", "")
            parts = username.split(":")  # system:serviceaccount:<namespace>:<name>
            if pods and len(parts) == 4:
                pod = self.read_pod(parts[2], pods[0])
                labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
                pipeline = labels.get(builders.LABEL_PIPELINE)
                workload = labels.get(builders.LABEL_WORKLOAD)
                attempt = labels.get(builders.LABEL_ATTEMPT)
                if pipeline and workload and attempt and attempt.isdigit():
                    key = (parts[2], pipeline, workload, int(attempt))
        if len(self.reviews) > 10_000:
            self.reviews.clear()
        self.reviews[digest] = (time.monotonic(), key)
        return key

    async def forward(self, request: web.Request) -> web.Response:
        """A standby's answer: the leader's, to the same request sent on to it (503 if it cannot be)."""
        target = forward_target(self.leader_endpoint(), request.headers)
        if target is None:
            return web.json_response({"error": "not the leader"}, status=503)
        if (request.content_length or 0) > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        headers = {"Content-Type": "application/json", FORWARDED: "1"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_SECONDS)
            )
        try:
            async with self.session.post(target, data=body, headers=headers, allow_redirects=False) as reply:
                answer = await reply.read()
                return web.Response(body=answer, status=reply.status, content_type="application/json")
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("progress event not forwarded to the leader at %s: %s", target, error)
            return web.json_response({"error": "not the leader, and the leader is unreachable"}, status=503)

    async def close(self, _: web.Application | None = None) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):
                await self.session.close()
            self.session = None

    async def handle(self, request: web.Request) -> web.Response:
        if not self.accepting():
            return await self.forward(request)
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return web.json_response({"error": "a bearer token is required"}, status=401)
        if (request.content_length or 0) > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        key = await asyncio.to_thread(self.identify, header.removeprefix("Bearer ").strip())
        if key is None:
            return web.json_response({"error": "token not accepted"}, status=403)
        if not self.buckets.setdefault(key, Bucket()).take():
            return web.json_response({"error": "rate limited"}, status=429)
        try:
            body = json.loads((await request.content.read(MAX_BODY + 1))[:MAX_BODY])
        except ValueError:
            return web.json_response({"error": "body must be a JSON epoch event"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        self.store.add(key, body)
        return web.json_response({"accepted": True}, status=202)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PATH, self.handle)
        app.router.add_get("/healthz", healthz)
        app.on_cleanup.append(self.close)
        return app


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(server: ProgressServer, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("progress endpoint on %s:%d", host, port)
    return runner

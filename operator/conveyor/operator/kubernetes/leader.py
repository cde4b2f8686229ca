"""Leader election over a coordination.k8s.io/v1 Lease: several operator replicas run, one reconciles.

client-go's protocol (tools/leaderelection), written out small so that its decisions are pure
functions with table tests (`verdict`, `sight`, `claimed`) and its I/O is a GET and one write:

- Every `retry` seconds each replica GETs the Lease and decides: create it (none yet), renew it
  (ours), take it (no holder, or its record has not changed for leaseDurationSeconds), or wait.
- Expiry is judged on the candidate's own monotonic clock, from when it first saw the current record,
  never from the holder's `renewTime`: the two machines' wall clocks need not agree.
- Every write is guarded: a create, or a PUT carrying the resourceVersion just read. Two candidates
  racing for an expired Lease cannot both win; the later write gets 409 Conflict and waits.
- Fencing: the leader counts from when it SENT its last successful claim and stops leading
  `renew_deadline` later unless a renewal succeeded meanwhile. Any other replica takes over no sooner
  than `lease` after it SAW that claim, which is later, so the old leader has stopped (its workers
  cancelled, `leading()` false for the steps still in flight) at least `lease - renew_deadline`
  before a new one can start. A leader that sees another holder stops at once.
- The holder may advertise where its progress endpoint is reachable (`ENDPOINT`, an annotation written
  with every claim, dropped on release); standbys read it with every look (`advertised`) and forward
  pods' epoch pushes there (statusserver).
- A replica that stops gracefully clears the holder, so a rolling update hands over at the standby's
  next retry instead of a lease duration later. A SIGKILLed leader hands over within `lease` plus
  up to two `retry` periods (one to see its last renewal, one to notice the expiry).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from conveyor.operator.kubernetes.executor import Api, ApiError

log = logging.getLogger("conveyor.operator.leader")

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"

ENDPOINT = "conveyor.dev/progress-endpoint"  # the holder's progress endpoint (annotation on the Lease)

Verdict = Literal["create", "renew", "acquire", "wait"]


@dataclass(frozen=True)
class Timings:
    """Seconds: how long a claim lasts, how soon its holder gives up without a renewal, how often
    every replica looks (client-go's defaults: 15, 10, 2)."""

    lease: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease > self.renew_deadline > self.retry > 0:
            raise ValueError(
                f"leader election needs lease > renew deadline > retry > 0, got {self.lease}, "
                f"{self.renew_deadline}, {self.retry}"
            )


@dataclass(frozen=True)
class Sighting:
    """A Lease's spec as this replica saw it, and since when (this replica's monotonic clock)."""

    spec: Mapping[str, Any]
    at: float


def holder(lease: Mapping[str, Any]) -> str:
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def sight(lease: Mapping[str, Any], previous: Sighting | None, now: float) -> Sighting:
    """The sighting of `lease` at `now`: the previous one, time included, while the spec is unchanged."""
    spec = dict(lease.get("spec") or {})
    if previous is not None and previous.spec == spec:
        return previous
    return Sighting(spec, now)


def verdict(lease: Mapping[str, Any] | None, identity: str, seen: Sighting | None, now: float) -> Verdict:
    """What `identity` does with the Lease it just read (`seen`: its sighting of that Lease)."""
    if lease is None:
        return "create"
    who = holder(lease)
    if who == identity:
        return "renew"
    if not who:
        return "acquire"
    duration = float((lease.get("spec") or {}).get("leaseDurationSeconds") or 0)
    if seen is None or now - seen.at >= duration:
        return "acquire"
    return "wait"


def advertised(lease: Mapping[str, Any] | None, identity: str) -> str | None:
    """The progress endpoint another replica advertises while it holds `lease` (None: none, no
    holder, or this replica holds it). Only an http(s) URL; the caller adds the path."""
    if lease is None or holder(lease) in ("", identity):
        return None
    url = str(((lease.get("metadata") or {}).get("annotations") or {}).get(ENDPOINT) or "")
    return url.rstrip("/") if url.startswith(("http://", "https://")) else None


def micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed(
    lease: Mapping[str, Any] | None,
    identity: str,
    namespace: str,
    name: str,
    timings: Timings,
    now: datetime,
    endpoint: str | None = None,
) -> dict[str, Any]:
    """The Lease to write to hold it as `identity` from `now`: renewed, and for a new holder also
    acquired anew with one more transition. The resourceVersion read is kept (the write's guard).
    The duration is rounded up: others must never wait less than this replica's fence assumes.
    `endpoint` is advertised (ENDPOINT); without one, a previous holder's is dropped."""
    spec = dict((lease or {}).get("spec") or {})
    stamp = micro_time(now)
    if holder(lease or {}) != identity:
        spec["acquireTime"] = stamp
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
    spec.update(holderIdentity=identity, leaseDurationSeconds=math.ceil(timings.lease), renewTime=stamp)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    read = (lease or {}).get("metadata") or {}
    annotations = {k: v for k, v in (read.get("annotations") or {}).items() if k != ENDPOINT}
    if endpoint:
        annotations[ENDPOINT] = endpoint
    if annotations:
        metadata["annotations"] = annotations
    if read.get("resourceVersion"):
        metadata["resourceVersion"] = read["resourceVersion"]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def released(lease: Mapping[str, Any]) -> dict[str, Any]:
    """The Lease with no holder and no advertised endpoint (what a gracefully stopping leader
    writes), guarded like a claim."""
    spec = {k: v for k, v in (lease.get("spec") or {}).items() if k != "holderIdentity"}
    meta = lease["metadata"]
    metadata: dict[str, Any] = {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "resourceVersion": meta["resourceVersion"],
    }
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != ENDPOINT}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def _noop() -> None:
    return None


@dataclass(frozen=True)
class Candidacy:
    """Which Lease the replicas contend for, and as whom this one does."""

    namespace: str
    name: str
    identity: str
    timings: Timings = field(default_factory=Timings)
    endpoint: str | None = None  # this replica's progress endpoint, advertised while it leads


@dataclass
class Elector:
    """One replica's candidacy: `run()` loops until cancelled, calling `on_started` when this replica
    becomes the leader and `on_stopped` when it stops (on the event loop). `leading()` is safe to call
    from any thread and is the fence for work already in flight."""

    api: Api  # with a short request timeout: a hung renewal must not outlast the renew deadline
    candidacy: Candidacy
    on_started: Callable[[], None] = _noop
    on_stopped: Callable[[], None] = _noop
    seen: Sighting | None = None
    renewed_at: float | None = None  # monotonic time the last successful claim was sent
    is_leader: bool = False  # what the callbacks were last told
    peer: str | None = None  # the progress endpoint the current holder advertises, if another replica
    _fence: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.namespace, self.name = self.candidacy.namespace, self.candidacy.name
        self.identity, self.timings = self.candidacy.identity, self.candidacy.timings
        self.path = LEASES.format(ns=self.namespace) + f"/{self.name}"

    def leading(self) -> bool:
        renewed = self.renewed_at
        return renewed is not None and time.monotonic() < renewed + self.timings.renew_deadline

    def attempt(self) -> float | None:
        """One look and at most one guarded write (blocking). Returns when the successful claim was
        sent, or None when another replica holds the Lease or won the race for it."""
        sent = time.monotonic()
        try:
            lease: dict[str, Any] | None = self.api.get(self.path)
        except ApiError as error:
            if error.status != 404:
                raise
            lease = None
        now = time.monotonic()
        self.peer = advertised(lease, self.identity)
        self.seen = sight(lease, self.seen, now) if lease is not None else None
        action = verdict(lease, self.identity, self.seen, now)
        if action == "wait":
            return None
        body = claimed(
            lease, self.identity, self.namespace, self.name, self.timings, datetime.now(UTC),
            self.candidacy.endpoint,
        )
        try:
            if action == "create":
                self.api.request("POST", LEASES.format(ns=self.namespace), body)
            else:
                self.api.request("PUT", self.path, body)
        except ApiError as error:
            if error.status == 409:
                return None  # another replica wrote first (AlreadyExists, or a newer resourceVersion)
            raise
        if action != "renew":
            log.info("acquired lease %s/%s as %s (%s)", self.namespace, self.name, self.identity, action)
        return sent

    async def run(self) -> None:
        try:
            while True:
                try:
                    self.renewed_at = await asyncio.to_thread(self.attempt)
                except Exception as error:  # unknown: keep leading until the deadline, try again
                    log.warning("lease %s/%s not renewed: %s", self.namespace, self.name, error)
                self.settle()
                await asyncio.sleep(self.timings.retry)
        finally:
            if self._fence is not None:
                self._fence.cancel()

    def settle(self) -> None:
        """Tell the callbacks about a change of leadership; arm the fence for the renew deadline."""
        leading = self.leading()
        if leading and not self.is_leader:
            self.is_leader = True
            self.on_started()
        elif not leading and self.is_leader:
            self.is_leader = False
            log.warning("stopped leading (lease %s/%s)", self.namespace, self.name)
            self.on_stopped()
        if self._fence is not None:
            self._fence.cancel()
            self._fence = None
        if leading and self.renewed_at is not None:
            remaining = self.renewed_at + self.timings.renew_deadline - time.monotonic()
            self._fence = asyncio.get_running_loop().call_later(max(0.0, remaining), self.settle)

    def step_down(self) -> None:
        """Stop leading now (the run loop must be cancelled first, or it may claim the Lease again)."""
        self.renewed_at = None
        self.settle()

    def release(self) -> None:
        """Clear the holder if it is still this replica (blocking), so a standby takes over at its
        next look. Call after `step_down` and after the work in flight has ended."""
        try:
            lease = self.api.get(self.path)
            if holder(lease) == self.identity:
                self.api.request("PUT", self.path, released(lease))
                log.info("released lease %s/%s", self.namespace, self.name)
        except ApiError as error:
            log.warning("lease %s/%s not released: %s", self.namespace, self.name, error)

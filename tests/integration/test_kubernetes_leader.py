"""Leader election (conveyor.operator.kubernetes.leader) against the real API server: of two candidates
exactly one leads; racing writes have one winner; a leader that stops renewing (as if SIGKILLed) is
replaced only after it has stopped leading by its own clock; a graceful leader releases the Lease."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from conveyor.operator.kubernetes.executor import Api
from conveyor.operator.kubernetes.leader import Candidacy, Elector, Timings, holder
from conveyor.operator.kubernetes.operator import api_client

pytestmark = pytest.mark.cluster

FAST = Timings(lease=2.0, renew_deadline=1.5, retry=0.25)
LIVENESS = 30.0  # seconds: a liveness bound for each wait, not a measurement


class Candidate:
    """An Elector whose leadership changes set asyncio events."""

    def __init__(self, api: Api, namespace: str, identity: str, name: str = "conveyor") -> None:
        self.started, self.stopped = asyncio.Event(), asyncio.Event()
        self.others: list[Candidate] = []
        self.overlap: list[
            str
        ] = []  # other candidates still leading by their own clock when this one started
        self.elector = Elector(
            api, Candidacy(namespace, name, identity, FAST), self._started, self.stopped.set
        )
        self.task: asyncio.Task[None] | None = None

    def _started(self) -> None:
        self.overlap += [o.elector.identity for o in self.others if o.elector.leading()]
        self.started.set()

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run())

    async def crash(self) -> None:
        """Stop the loop without a word to the API server (what SIGKILL leaves behind)."""
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@asynccontextmanager
async def candidates(kubeconfig: Path, namespace: str, *identities: str) -> AsyncIterator[list[Candidate]]:
    api = Api(api_client(str(kubeconfig)), timeout=FAST.renew_deadline / 2)
    made = [Candidate(api, namespace, identity) for identity in identities]
    for candidate in made:
        candidate.others = [o for o in made if o is not candidate]
        candidate.start()
    try:
        yield made
    finally:
        for candidate in made:
            if candidate.task is not None and not candidate.task.done():
                candidate.task.cancel()


async def first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    done, pending = await asyncio.wait(waits, timeout=LIVENESS, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done, "no candidate changed leadership in time"


def read_lease(api: Api, namespace: str, name: str = "conveyor") -> dict[str, Any]:
    lease: dict[str, Any] = api.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")
    return lease


def test_one_leader_and_a_crash_hands_over_after_the_fence(kubeconfig: Path, namespace: str) -> None:
    async def scenario() -> None:
        async with candidates(kubeconfig, namespace, "a", "b") as (a, b):
            await first(a.started, b.started)
            leader, standby = (a, b) if a.started.is_set() else (b, a)
            assert not standby.started.is_set() and not standby.elector.leading()
            lease = read_lease(leader.elector.api, namespace)
            assert holder(lease) == leader.elector.identity
            assert lease["spec"]["leaseDurationSeconds"] == 2

            await leader.crash()
            await asyncio.wait_for(standby.started.wait(), LIVENESS)
            assert standby.overlap == []  # the crashed leader's own fence had fallen first
            lease = read_lease(leader.elector.api, namespace)
            assert holder(lease) == standby.elector.identity
            assert lease["spec"]["leaseTransitions"] == 1

    asyncio.run(scenario())


def test_graceful_stop_releases_the_lease(kubeconfig: Path, namespace: str) -> None:
    async def scenario() -> None:
        async with candidates(kubeconfig, namespace, "a", "b") as (a, b):
            await first(a.started, b.started)
            leader, standby = (a, b) if a.started.is_set() else (b, a)
            await leader.crash()
            leader.elector.step_down()
            assert leader.stopped.is_set() and not leader.elector.leading()
            await asyncio.to_thread(leader.elector.release)
            api = leader.elector.api
            released = read_lease(api, namespace)
            # Released, or already taken by the standby; never still held by the leader.
            assert holder(released) in ("", standby.elector.identity)
            await asyncio.wait_for(standby.started.wait(), LIVENESS)
            assert holder(read_lease(api, namespace)) == standby.elector.identity

    asyncio.run(scenario())


@pytest.mark.parametrize("existing", [False, True])
def test_racing_claims_have_one_winner(kubeconfig: Path, namespace: str, existing: bool) -> None:
    """Eight replicas claim at the same moment: a missing Lease is created once, a released one is
    taken once (the resourceVersion guard); every loser sees 409 and reports the Lease as not its own."""
    api = Api(api_client(str(kubeconfig), pool_size=8), timeout=10)
    name = "race"
    if existing:
        first_elector = Elector(api, Candidacy(namespace, name, "seed", FAST))
        assert first_elector.attempt() is not None
        first_elector.release()
    electors = [Elector(api, Candidacy(namespace, name, f"r{n}", FAST)) for n in range(8)]
    barrier = threading.Barrier(len(electors))
    results: dict[str, float | None] = {}

    def claim(elector: Elector) -> Callable[[], None]:
        def run() -> None:
            barrier.wait()
            results[elector.identity] = elector.attempt()

        return run

    threads = [threading.Thread(target=claim(e)) for e in electors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LIVENESS)
    winners = [identity for identity, sent in results.items() if sent is not None]
    assert len(results) == 8 and len(winners) == 1
    assert holder(read_lease(api, namespace, name)) == winners[0]

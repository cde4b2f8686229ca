"""The Lease decisions of leader election (conveyor.operator.kubernetes.leader): what a replica does
with the Lease it read, when a record counts as expired (on the reader's clock), and what it writes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from conveyor.operator.kubernetes.leader import (
    Sighting,
    Timings,
    claimed,
    holder,
    released,
    sight,
    verdict,
)

NOW = datetime(2026, 11, 30, 5, 0, 0, 123456, tzinfo=UTC)


def lease(
    who: str | None, duration: int = 15, renewed: str = "2026-11-30T04:59:59.000000Z"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"leaseDurationSeconds": duration, "renewTime": renewed, "leaseTransitions": 3}
    if who is not None:
        spec["holderIdentity"] = who
    return {
        "metadata": {"name": "conveyor", "namespace": "conveyor-system", "resourceVersion": "42"},
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("current", "seen_at", "now", "expected"),
    [
        (None, None, 100.0, "create"),  # no Lease yet
        (lease("a"), 90.0, 100.0, "renew"),  # ours: renew, however old
        (lease("a"), 0.0, 100.0, "renew"),
        (lease(None), 99.0, 100.0, "acquire"),  # released by a leader that stopped gracefully
        (lease(""), 99.0, 100.0, "acquire"),
        (lease("b"), 90.0, 100.0, "wait"),  # another holder, seen unchanged for 10 of 15 s
        (lease("b"), 85.0, 100.0, "acquire"),  # unchanged for exactly the lease duration: lapsed
        (lease("b"), 80.0, 100.0, "acquire"),
        (lease("b", duration=40), 80.0, 100.0, "wait"),  # the record's own duration counts
        (lease("b"), None, 100.0, "acquire"),  # never sighted (a caller bug): do not wait forever
    ],
)
def test_verdict(current: dict[str, Any] | None, seen_at: float | None, now: float, expected: str) -> None:
    seen = None if current is None or seen_at is None else Sighting(current["spec"], seen_at)
    assert verdict(current, "a", seen, now) == expected


def test_expiry_is_measured_from_the_sighting_not_the_holders_clock() -> None:
    # renewTime far in the past by the holder's wall clock: irrelevant, the reader saw it just now
    skewed = lease("b", renewed="2020-01-01T00:00:00.000000Z")
    seen = sight(skewed, None, 100.0)
    assert verdict(skewed, "a", seen, 101.0) == "wait"
    assert verdict(skewed, "a", seen, 115.0) == "acquire"


def test_a_sighting_keeps_its_time_while_the_record_is_unchanged() -> None:
    first = sight(lease("b"), None, 10.0)
    assert sight(lease("b"), first, 12.0) is first
    renewed = sight(lease("b", renewed="2026-11-30T05:00:01.000000Z"), first, 14.0)
    assert renewed.at == 14.0  # a renewal restarts the clock
    assert sight(lease("c", renewed="2026-11-30T05:00:01.000000Z"), renewed, 15.0).at == 15.0


def test_claim_of_a_new_lease() -> None:
    body = claimed(None, "a", "conveyor-system", "conveyor", Timings(), NOW)
    assert body["metadata"] == {"name": "conveyor", "namespace": "conveyor-system"}
    assert body["spec"] == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-11-30T05:00:00.123456Z",
        "renewTime": "2026-11-30T05:00:00.123456Z",
        "leaseTransitions": 0,
    }


def test_renewal_keeps_acquire_time_and_transitions_and_is_guarded() -> None:
    current = lease("a")
    current["spec"]["acquireTime"] = "2026-11-30T04:00:00.000000Z"
    body = claimed(current, "a", "conveyor-system", "conveyor", Timings(), NOW)
    assert body["metadata"]["resourceVersion"] == "42"
    assert body["spec"]["acquireTime"] == "2026-11-30T04:00:00.000000Z"
    assert body["spec"]["leaseTransitions"] == 3
    assert body["spec"]["renewTime"] == "2026-11-30T05:00:00.123456Z"


def test_takeover_counts_a_transition() -> None:
    body = claimed(
        lease("b"), "a", "conveyor-system", "conveyor", Timings(lease=4, renew_deadline=3, retry=0.5), NOW
    )
    assert holder(body) == "a"
    assert body["spec"]["leaseTransitions"] == 4
    assert body["spec"]["acquireTime"] == body["spec"]["renewTime"]
    assert body["spec"]["leaseDurationSeconds"] == 4
    assert body["metadata"]["resourceVersion"] == "42"


def test_release_clears_only_the_holder() -> None:
    body = released(lease("a"))
    assert holder(body) == ""
    assert body["metadata"]["resourceVersion"] == "42"
    assert body["spec"]["leaseTransitions"] == 3


@pytest.mark.parametrize(
    ("lease_s", "renew_s", "retry_s"), [(10, 10, 2), (15, 10, 10), (15, 10, 0), (5, 10, 2)]
)
def test_timings_must_leave_a_fence(lease_s: float, renew_s: float, retry_s: float) -> None:
    with pytest.raises(ValueError, match="lease > renew deadline > retry"):
        Timings(lease_s, renew_s, retry_s)

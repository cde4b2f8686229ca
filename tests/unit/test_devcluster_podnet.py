"""The pure part of the local node's pod network: which /24 a new cluster's bridge takes."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from conveyor.devcluster import podnet

ROUTES = """\
default via 192.0.2.1 dev eth0
10.250.0.0/24 dev cvy1 proto kernel scope link src 10.250.0.1
10.250.7.0/24 dev cvy2 proto kernel scope link src 10.250.7.1
192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2
local 127.0.0.0/8 dev lo table local proto kernel scope host src 127.0.0.1
broadcast 192.0.2.255 dev eth0 table local proto kernel scope link src 192.0.2.2
"""


def test_routes_are_read_without_the_default_route() -> None:
    found = {str(n) for n in podnet.routed_networks(ROUTES)}
    assert found == {"10.250.0.0/24", "10.250.7.0/24", "192.0.2.0/24", "127.0.0.0/8", "192.0.2.255/32"}


@pytest.mark.parametrize(
    ("start", "expected"), [(0, "10.250.1.0/24"), (7, "10.250.8.0/24"), (3, "10.250.3.0/24")]
)
def test_a_new_bridge_never_overlaps_a_route(start: int, expected: str) -> None:
    assert str(podnet.pick_subnet(podnet.routed_networks(ROUTES), start)) == expected


def test_a_covering_route_leaves_no_subnet() -> None:
    with pytest.raises(RuntimeError, match="no free /24"):
        podnet.pick_subnet([ipaddress.IPv4Network("10.0.0.0/8")])


def test_wrapping_from_the_end_of_the_pool() -> None:
    taken = [ipaddress.IPv4Network("10.250.255.0/24")]
    assert str(podnet.pick_subnet(taken, 255)) == "10.250.0.0/24"


def test_pods_reach_the_host_on_the_bridge_when_they_have_their_own_network(tmp_path: Path) -> None:
    assert podnet.host_address(tmp_path) == "127.0.0.1"  # no pod network: pods share the host's
    (tmp_path / "network.json").write_text(json.dumps({"bridge": "cvy0", "subnet": "10.250.7.0/24"}))
    assert podnet.host_address(tmp_path) == "10.250.7.1"

"""Pod networks of the local node: every pod its own network namespace, joined to one bridge.

Why: pods of one node must never share ports. Two torchrun rank-0 agents both bind 29500 (and a
finished agent keeps its TCPStore open while torchelastic's exit barrier waits for the others), two
serving replicas both bind their serving port on 0.0.0.0. On a real node each pod has its own
network namespace and address; here too. Binding one's own loopback address is not enough: servers
bind 0.0.0.0.

Layout (as root, with ``ip`` from iproute2): a bridge ``cvy<hex>`` in the host's namespace holds the
first address of a private /24 that no host route covers yet (picked at start, from 10.250.0.0/16,
so concurrent clusters on one machine each get their own); each pod gets a named network namespace
with ``lo`` up and a veth ``eth0`` holding the next free address of that /24, its peer enslaved to the
bridge. Pods get **no default route**: they reach each other and the host (at the bridge's address),
nothing else, so no pod traffic can leave the machine. The test process reaches a pod at its
address through the bridge's connected route.

What exists is written to ``<state_dir>/network.json`` before it is made, so that ``cleanup`` (the
agent's shutdown, and ``Cluster.stop`` after an agent that was killed) removes exactly it. Deleting a
pod's namespace deletes its veth pair; deleting the bridge removes its route.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

POOL = ipaddress.IPv4Network("10.250.0.0/16")
NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True)
class PodNetwork:
    """One pod's address and, when isolated, the network namespace its containers enter."""

    ip: str
    netns: str | None = None

    @property
    def netns_path(self) -> str | None:
        return str(NETNS_DIR / self.netns) if self.netns else None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def routed_networks(routes: str) -> list[ipaddress.IPv4Network]:
    """The IPv4 destinations of ``ip -4 route show table all`` output (default routes left out)."""
    found = []
    for line in routes.splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "unreachable", "blackhole", "prohibit"):
            words = words[1:]
        if not words or words[0] == "default":
            continue
        with contextlib.suppress(ValueError):
            found.append(ipaddress.IPv4Network(words[0], strict=False))
    return found


def pick_subnet(taken: list[ipaddress.IPv4Network], start: int = 0) -> ipaddress.IPv4Network:
    """The first /24 of ``POOL`` from index ``start`` on (wrapping) that overlaps nothing ``taken``."""
    candidates = list(POOL.subnets(new_prefix=24))
    start %= len(candidates)
    for subnet in candidates[start:] + candidates[:start]:
        if not any(subnet.overlaps(t) for t in taken):
            return subnet
    raise RuntimeError(f"no free /24 in {POOL} for the local node's pod network")


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of ``POOL`` that no route of this machine overlaps (another cluster's bridge, a LAN),
    from a random place, so clusters starting together rarely race for the same one."""
    out = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=False
    )
    return pick_subnet(routed_networks(out.stdout), secrets.randbelow(256))


class Bridge:
    """The local node's pod network: a bridge, a /24, one namespace per pod. Thread-safe."""

    def __init__(self, state_dir: Path) -> None:
        self.record = state_dir / "network.json"
        self.lock = threading.Lock()
        self.name = f"cvy{secrets.token_hex(4)}"
        self.namespaces: set[str] = set()
        self.in_use: set[int] = set()
        self.last = 1
        for _ in range(5):  # another cluster may take the same /24 between the check and the add
            self.subnet = free_subnet()
            self._save()
            try:
                _ip("link", "add", self.name, "type", "bridge")
                _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.name)
                _ip("link", "set", self.name, "up")
                return
            except RuntimeError:
                with contextlib.suppress(RuntimeError):
                    _ip("link", "del", self.name)
        raise RuntimeError(f"could not create the pod bridge {self.name}")

    @property
    def gateway(self) -> str:
        """The host's address on the pod network (`host_address` reads it back from the record)."""
        return str(self.subnet.network_address + 1)

    def _save(self) -> None:
        body = {"bridge": self.name, "subnet": str(self.subnet), "namespaces": sorted(self.namespaces)}
        self.record.write_text(json.dumps(body))

    def attach(self) -> PodNetwork:
        """A new namespace with the next free address (the bridge's /24 holds 253 pods at once)."""
        with self.lock:
            # Round robin from the last one given: a just-freed address (and veth name) is taken last,
            # after the namespace of its old pod, whose stray processes may still be exiting, is gone.
            hosts = list(range(2, self.subnet.num_addresses - 1))
            start = hosts.index(self.last) + 1 if self.last in hosts else 0
            index = next(i for i in hosts[start:] + hosts[:start] if i not in self.in_use)
            self.last = index
            self.in_use.add(index)
            netns = f"{self.name}-{index}"
            self.namespaces.add(netns)
            self._save()
        ip = str(self.subnet.network_address + index)
        veth = f"{self.name[3:]}v{index}"  # <= 15 characters
        try:
            _ip("netns", "add", netns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _ip("link", "set", veth, "master", self.name, "up")
            _ip("-n", netns, "addr", "add", f"{ip}/{self.subnet.prefixlen}", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")
        except RuntimeError:
            self.detach(PodNetwork(ip, netns))
            raise
        return PodNetwork(ip, netns)

    def detach(self, network: PodNetwork) -> None:
        """Remove a pod's namespace (its processes are gone); its address is free again."""
        if network.netns is None:
            return
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", network.netns)
        with self.lock:
            self.namespaces.discard(network.netns)
            self.in_use.discard(int(ipaddress.ip_address(network.ip)) - int(self.subnet.network_address))
            self._save()

    def close(self) -> None:
        cleanup(self.record.parent)


def cleanup(state_dir: Path) -> None:
    """Remove every namespace and the bridge that ``<state_dir>/network.json`` records."""
    record = state_dir / "network.json"
    if not record.exists():
        return
    body = json.loads(record.read_text())
    for netns in body.get("namespaces", []):
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", netns)
    with contextlib.suppress(RuntimeError):
        _ip("link", "del", body["bridge"])
    record.unlink(missing_ok=True)


def host_address(state_dir: Path) -> str:
    """Where local-node pods reach a server on this machine (e.g. the operator's progress endpoint):
    the bridge's address when the cluster at `state_dir` gave pods their own network, else loopback."""
    record = state_dir / "network.json"
    if not record.exists():
        return "127.0.0.1"
    subnet = ipaddress.ip_network(json.loads(record.read_text())["subnet"])
    return str(subnet.network_address + 1)

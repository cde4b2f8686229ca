"""The local node's shared hosts file: pods read it at every lookup while it changes, so it only grows
(never truncated under a reader), and a name that comes back at another address is found there."""

from __future__ import annotations

import os
from pathlib import Path

from conveyor.devcluster.local_kubelet import HostsFile


def lookup(path: Path, name: str) -> str | None:
    """The first address for `name`, as glibc's files backend reads it."""
    for line in path.read_text().splitlines():
        words = line.split("#")[0].split()
        if len(words) > 1 and name in words[1:]:
            return words[0]
    return None


def test_lines_are_appended_in_place(tmp_path: Path) -> None:
    hosts = HostsFile(tmp_path / "hosts")
    inode = os.stat(hosts.path).st_ino
    hosts.set("uid-a", "10.250.1.2", ["a-0.a.ns.svc.cluster.local", "a-0"])
    before = hosts.path.read_text()
    hosts.set("uid-b", "10.250.1.3", ["b-0"])
    after = hosts.path.read_text()
    assert after.startswith(before)  # a reader never sees less than before
    assert lookup(hosts.path, "a-0.a.ns.svc.cluster.local") == "10.250.1.2"
    assert lookup(hosts.path, "b-0") == "10.250.1.3"
    assert os.stat(hosts.path).st_ino == inode  # pods bind-mount this very file


def test_a_name_back_at_another_address_is_found_there(tmp_path: Path) -> None:
    hosts = HostsFile(tmp_path / "hosts")
    hosts.set("uid-1", "10.250.1.2", ["web-0"])
    hosts.set("uid-2", "10.250.1.9", ["web-0"])
    assert lookup(hosts.path, "web-0") == "10.250.1.9"
    assert hosts.path.read_text().count("web-0") == 1

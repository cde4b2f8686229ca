"""pytest fixtures for tests on the real local control plane (mark them ``@pytest.mark.cluster``).

Enable with ``pytest_plugins = ["conveyor.devcluster.pytest_plugin"]`` in the root conftest.

- ``devcluster`` (session): one running ``Cluster`` (4 GPU nodes x 8 GPUs + the local node).
- ``kubeconfig``, ``k8s_api`` (an ``ApiClient``), ``kubectl`` and ``helm`` (binary paths).
- ``namespace``: a fresh namespace per test (its ``default`` ServiceAccount exists), deleted after.
- ``wait_for(check, timeout=..., what=...)``: poll until ``check()`` returns a truthy value.

If the binaries are not built, the tests skip locally with the reason, and FAIL when ``CI`` is set.
A cluster that does not start always fails. ``CONVEYOR_DEVCLUSTER_KEEP=1`` keeps the state directory
(logs) after the session; ``CONVEYOR_DEVCLUSTER_STATE=<state dir>`` runs the tests against an
already running cluster (``conveyor dev-cluster up``) instead of starting one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.devcluster.cluster import Cluster, ClusterConfig, default_bin_dir, missing_binaries


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def wait_for(
    check: Callable[[], Any], timeout: float = 60.0, what: str = "condition", interval: float = 0.2
) -> Any:
    """Poll ``check`` until it returns something truthy (and return that); exceptions count as not yet."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" (last error: {last})" if last else "")
            )
        time.sleep(interval)


STATE_PREFIX = "conveyor-devcluster-"


def reap_orphans() -> None:
    """Stop clusters left by test sessions that were killed (their owner pid is gone)."""
    for state in Path(tempfile.gettempdir()).glob(f"{STATE_PREFIX}*/state.json"):
        try:
            owner = json.loads(state.read_text())["config"].get("owner_pid")
            if owner is None or Path(f"/proc/{owner}").exists():
                continue
            Cluster.attach(state.parent).stop()
            shutil.rmtree(state.parent, ignore_errors=True)
        except Exception:
            continue


@pytest.fixture(scope="session")
def devcluster() -> Iterator[Cluster]:
    existing = os.environ.get("CONVEYOR_DEVCLUSTER_STATE")
    if existing:  # reuse a running cluster, e.g. `conveyor dev-cluster up`
        yield Cluster.attach(Path(existing))
        return
    bin_dir = default_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        reason = (
            f"control-plane binaries not built ({', '.join(missing)} missing in {bin_dir}); "
            "run scripts/build-control-plane"
        )
        if _in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    reap_orphans()
    state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX))
    cluster = Cluster(ClusterConfig(state_dir=state_dir, bin_dir=bin_dir, owner_pid=os.getpid()))
    try:
        cluster.start()
    except Exception as e:
        pytest.fail(f"the local control plane did not start: {e}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        if not os.environ.get("CONVEYOR_DEVCLUSTER_KEEP"):
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kubeconfig(devcluster: Cluster) -> Path:
    return devcluster.kubeconfig


@pytest.fixture(scope="session")
def k8s_api(devcluster: Cluster) -> Any:
    return devcluster.api()


@pytest.fixture(scope="session")
def kubectl(devcluster: Cluster) -> str:
    return devcluster.binary("kubectl")


@pytest.fixture(scope="session")
def helm(devcluster: Cluster) -> str:
    path = devcluster.binary("helm")
    if not os.access(path, os.X_OK):
        pytest.fail(f"helm not built at {path}; run scripts/build-control-plane", pytrace=False)
    return path


@pytest.fixture
def namespace(request: pytest.FixtureRequest, k8s_api: Any) -> Iterator[str]:
    from kubernetes import client

    core: Any = client.CoreV1Api(k8s_api)
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_for(
        lambda: core.read_namespaced_service_account("default", name), 30, f"ServiceAccount {name}/default"
    )
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    return wait_for

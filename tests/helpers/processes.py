"""Processes in tests: a stand-in for `python` (or for the trainer in warm workers), and waiting for
stopped processes to be gone.

Stopping a workload signals its whole process group but waits only for the group's leader, so the
other members exit a moment later; tests poll for that (bounded) instead of sleeping a fixed time.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from conveyor.operator.executors.forkserver import ForkServer
from conveyor.operator.executors.local import LocalExecutor

T = TypeVar("T")


def alive(pid: int) -> bool:
    """Running, or stopped but not yet exited (a zombie has exited)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leftovers(survivors: Callable[[], list[T]], timeout: float) -> list[T]:
    """Poll `survivors` until it reports none or `timeout` seconds pass; its last report."""
    deadline = time.monotonic() + timeout
    while (left := survivors()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for `python`: the executor runs `<it> -m conveyor.trainer ...`."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def stand_in_executor(
    launch: str, root: Path, script: str, forkserver: ForkServer, monkeypatch: pytest.MonkeyPatch
) -> LocalExecutor:
    """A local executor whose workloads run `script` (from `fake_python`) instead of the trainer:
    cold, as the interpreter it starts; warm, as what the fork server's children become."""
    if launch == "cold":
        return LocalExecutor(root, python=script)
    monkeypatch.setenv("CONVEYOR_TEST_TRAINER", script)
    return LocalExecutor(root, warm=True, trainer_module="tests.helpers.shell_trainer", forkserver=forkserver)

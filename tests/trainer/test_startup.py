"""The `startup` event: process start times from /proc, the phases in order, and the first step."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.trainer import progress, startup
from tests.trainer.training_helpers import cli, prepared

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def test_a_process_start_time_is_when_it_was_started() -> None:
    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        after = time.time()
        started = startup.process_started_at(child.pid)
    finally:
        child.communicate(b"")
    assert started is not None
    tick = 0.011  # /proc counts in clock ticks (10 ms), rounded down
    assert before - tick <= started <= after + tick
    own = startup.process_started_at()
    assert own is not None and own < before
    assert startup.process_started_at(2**30) is None  # no such process


def test_phases_come_out_in_order_and_a_phase_before_the_process_counts_from_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run")
    marks = startup.Startup()
    assert {"launcher", "process"} <= marks.at.keys() and marks.at["launcher"] <= marks.at["process"]
    # A fork server imported everything before forking this process: imports count as done at its start.
    marks.at["imported"] = marks.at["process"] - 5.0
    for phase in ("rendezvous", "data", "model", "firstStep"):
        marks.mark(phase)
    event = marks.event(rank=1, world_size=2)
    assert event["event"] == "startup" and (event["rank"], event["worldSize"]) == (1, 2)
    at = event["at"]
    assert list(at) == list(startup.PHASES)
    assert at["imported"] == at["process"]
    assert list(at.values())[1:] == sorted(list(at.values())[1:])
    with pytest.raises(ValueError, match="unknown start-up phase"):
        marks.mark("coffee")


def test_no_launcher_outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert "launcher" not in startup.Startup().event(0, 1)["at"]


@pytest.mark.parametrize("items", [[], [1], [1, 2, 3]])
def test_after_first_calls_back_once_the_first_item_is_done(items: list[int]) -> None:
    calls: list[int] = []
    seen: list[int] = []
    for item in startup.after_first(items, lambda: calls.append(len(seen))):
        assert calls == ([1] if seen else [])  # called once the consumer is through with the first
        seen.append(item)
        if len(seen) > 1:
            break
    assert seen == items[:2]
    assert calls == ([1] if items else [])


def test_the_train_stage_prints_one_startup_event_at_its_first_step(tmp_path: Path) -> None:
    data = prepared(tmp_path, data={"source": "builtin://iris"})
    done = cli("train", "--config", '{"training": {"epochs": 2}}', "--data", data, "--out", tmp_path / "m")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    (event,) = [e for e in lines if e["event"] == "startup"]
    assert (event["rank"], event["worldSize"]) == (0, 1)
    at = event["at"]
    assert list(at) == ["process", "imported", "rendezvous", "data", "model", "firstStep"]
    assert list(at.values()) == sorted(at.values())
    # Printed before the first epoch's event, and kept out of progress.jsonl (the epoch events).
    kinds = [e["event"] for e in lines]
    assert kinds.index("startup") < kinds.index("epoch")
    assert [e["event"] for e in progress.read_events(tmp_path / "m")] == ["epoch", "epoch"]

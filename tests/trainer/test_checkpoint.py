"""Checkpoints: atomic writes, and a partial or corrupt file is never loaded."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conveyor.trainer import checkpoint
from tests.trainer.training_helpers import child_env


def state(epoch: int, size: int = 1000) -> dict[str, object]:
    return {
        "epoch": epoch,
        "model": {"w": torch.full((size,), float(epoch))},
        "rng": [checkpoint.rng_state()],
    }


def test_round_trip_restores_model_and_every_rng(tmp_path: Path) -> None:
    path = tmp_path / "latest.pt"
    checkpoint.save(path, state(3))
    expected = (random.random(), np.random.rand(), torch.rand(2))
    loaded = checkpoint.load(path)
    assert loaded is not None and loaded["epoch"] == 3
    assert torch.equal(loaded["model"]["w"], torch.full((1000,), 3.0))
    checkpoint.set_rng_state(loaded["rng"][0])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(2), expected[2])
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temp file left behind


def test_partial_temp_file_is_never_loaded(tmp_path: Path) -> None:
    checkpoint.save(tmp_path / "latest.pt", state(1))
    whole = (tmp_path / "latest.pt").read_bytes()
    # A writer killed mid-write leaves its temp file; `latest.pt` still holds the previous checkpoint.
    (tmp_path / ".latest.pt.4242.tmp").write_bytes(state_bytes(2)[: len(whole) // 2])
    loaded = checkpoint.load(tmp_path / "latest.pt")
    assert loaded is not None and loaded["epoch"] == 1
    assert [p.name for p in checkpoint.remove_partials(tmp_path)] == [".latest.pt.4242.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def state_bytes(epoch: int) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state(epoch), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("content", ["truncated", "garbage", "foreign"])
def test_corrupt_latest_is_reported_and_ignored(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latest.pt"
    data = {
        "truncated": state_bytes(5)[:-200],
        "garbage": b"\x00not a checkpoint" * 10,
        "foreign": _saved({"weights": torch.ones(2)}),
    }[content]
    path.write_bytes(data)
    assert checkpoint.load(path) is None
    assert str(path) in capsys.readouterr().err


def _saved(obj: object) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


WRITER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from conveyor.trainer import checkpoint
    path = Path(sys.argv[1])
    for epoch in range(1, 10_000):
        checkpoint.save(path, {"epoch": epoch, "model": {"w": torch.full((4_000_000,), float(epoch))}})
        print(epoch, flush=True)
    """
)


def test_killed_writer_never_leaves_a_loadable_partial(tmp_path: Path) -> None:
    """SIGKILL a process that is writing 16 MB checkpoints back to back, at several moments."""
    path = tmp_path / "latest.pt"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=child_env()
    )
    assert writer.stdout is not None
    printed = int(writer.stdout.readline())  # the first checkpoint is complete
    time.sleep(0.05 + random.random() * 0.1)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    printed = max([printed, *(int(line) for line in writer.stdout.read().split())])
    loaded = checkpoint.load(path)
    assert loaded is not None
    # Either the last checkpoint it reported, or the one it had renamed into place just before dying.
    assert loaded["epoch"] in (printed, printed + 1)
    assert torch.equal(loaded["model"]["w"], torch.full((4_000_000,), float(loaded["epoch"])))
    checkpoint.remove_partials(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]

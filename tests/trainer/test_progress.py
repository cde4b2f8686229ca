"""How a trial waits for the tuner's verdict: the epochs it is told, the file the executor writes, and a
wait that ends with the verdict or, with nobody judging, at its timeout."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from conveyor.trainer import progress
from conveyor.trainer.artifacts import write_json_atomic


def judge(model_dir: Path, epoch: int) -> None:
    write_json_atomic(model_dir / progress.VERDICT_FILE, {"epoch": epoch})


@pytest.mark.parametrize(("named", "epochs"), [(None, set()), ("", set()), ("1,3,9", {1, 3, 9}), ("4", {4})])
def test_the_epochs_to_wait_after_come_from_the_environment(
    named: str | None, epochs: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    if named is None:
        monkeypatch.delenv(progress.VERDICT_EPOCHS_ENV, raising=False)
    else:
        monkeypatch.setenv(progress.VERDICT_EPOCHS_ENV, named)
    assert progress.verdict_epochs() == epochs


def test_nothing_judged_reads_as_epoch_zero(tmp_path: Path) -> None:
    assert progress.judged_epoch(tmp_path) == 0
    (tmp_path / progress.VERDICT_FILE).write_text('{"epo')  # a writer mid-write (the executor's is atomic)
    assert progress.judged_epoch(tmp_path) == 0
    judge(tmp_path, 3)
    assert progress.judged_epoch(tmp_path) == 3


def test_a_verdict_on_this_epoch_or_a_later_one_ends_the_wait(tmp_path: Path) -> None:
    judge(tmp_path, 3)
    assert progress.await_verdict(tmp_path, 3, timeout=0.0)
    assert progress.await_verdict(tmp_path, 1, timeout=0.0)


def test_without_a_verdict_the_wait_ends_at_its_timeout(tmp_path: Path) -> None:
    judge(tmp_path, 1)  # an earlier rung's
    assert not progress.await_verdict(tmp_path, 3, timeout=0.2)


def test_the_wait_ends_when_the_verdict_arrives(tmp_path: Path) -> None:
    waiting = threading.Event()
    done: list[bool] = []

    def trial() -> None:
        waiting.set()
        done.append(progress.await_verdict(tmp_path, 3, timeout=30))

    thread = threading.Thread(target=trial)
    thread.start()
    assert waiting.wait(timeout=10)
    judge(tmp_path, 3)
    thread.join(timeout=10)
    assert done == [True]

"""serve.batching with a fake model: which requests share a model call (up to the batch size, after the
delay, at once while the model is busy), that each caller gets exactly its own rows' answer, and that a
failed model call reaches every caller of that batch and no other."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from conveyor.trainer.serve.batching import Batcher

LONG_DELAY = 60.0  # a timer that never fires within a test: a flush before it is the batch size's doing
Scenario = Callable[[Batcher], Awaitable[None]]


class Model:
    """Answers each row with its first value times ten; records every batch it sees; `poison` rows fail
    their batch; while `hold` is clear, a call waits for it (the model is busy)."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.batches.append(rows[:, 0].tolist())
        assert self.hold.wait(10), "the test never released the model"
        if (rows[:, 0] < 0).any():
            raise ValueError("negative rows poison the batch")
        out: np.ndarray = rows[:, 0] * 10
        return out


def rows(*firsts: float) -> np.ndarray:
    """One row per value, two features each: [[v, 0], ...]."""
    return np.array([[v, 0.0] for v in firsts], np.float32)


def run(model: Model, scenario: Scenario, max_batch: int = 4, max_delay: float = LONG_DELAY) -> list[int]:
    """Run `scenario` on a batcher over `model`; the sizes of the batches `on_batch` reported."""
    reported: list[int] = []

    async def main() -> None:
        batcher = Batcher(model, max_batch, max_delay, on_batch=lambda n, _: reported.append(n))
        try:
            await asyncio.wait_for(scenario(batcher), 20)
        finally:
            model.hold.set()  # a failed scenario must not leave the model thread waiting
            batcher.close()

    asyncio.run(main())
    return reported


def answers(*futures: asyncio.Future[np.ndarray]) -> list[list[float]]:
    return [f.result().tolist() for f in futures]


def test_requests_waiting_together_share_one_call_and_each_gets_its_own_rows() -> None:
    model = Model()

    async def scenario(batcher: Batcher) -> None:
        first, second, third = batcher.submit(rows(1)), batcher.submit(rows(2, 3)), batcher.submit(rows(4))
        assert model.batches == [] and not batcher.busy  # 4 rows of at most 5: they wait for the delay
        await asyncio.gather(first, second, third)
        assert answers(first, second, third) == [[10.0], [20.0, 30.0], [40.0]]

    assert run(model, scenario, max_batch=5, max_delay=0.05) == [4]
    assert model.batches == [[1.0, 2.0, 3.0, 4.0]]


def test_a_full_batch_is_flushed_at_once_without_waiting_for_the_delay() -> None:
    model = Model()

    async def scenario(batcher: Batcher) -> None:
        first = batcher.submit(rows(1, 2))
        assert not batcher.busy and batcher.timer is not None  # waiting for company
        second = batcher.submit(rows(3, 4))
        assert batcher.busy and batcher.timer is None  # 4 rows: the model runs now
        await asyncio.gather(first, second)
        assert answers(first, second) == [[10.0, 20.0], [30.0, 40.0]]

    assert run(model, scenario) == [4]


def test_a_batch_never_exceeds_max_batch_and_the_rest_goes_next() -> None:
    model = Model()

    async def scenario(batcher: Batcher) -> None:
        model.hold.clear()
        busy = batcher.submit(rows(0))  # a zero delay flushes at once: the model is now busy
        queued = [batcher.submit(rows(v, v + 0.5)) for v in (1, 2, 3)]
        assert len(batcher.pending) == 3  # nothing flushes while the model is busy
        model.hold.set()
        await asyncio.gather(busy, *queued)
        assert answers(*queued) == [[10.0, 15.0], [20.0, 25.0], [30.0, 35.0]]

    assert run(model, scenario, max_batch=4, max_delay=0) == [1, 4, 2]
    assert model.batches == [[0.0], [1.0, 1.5, 2.0, 2.5], [3.0, 3.5]]


def test_requests_queued_while_busy_run_the_moment_the_model_is_free() -> None:
    model = Model()

    async def scenario(batcher: Batcher) -> None:
        model.hold.clear()
        first = batcher.submit(rows(1, 2, 3, 4))  # full: runs at once
        later = batcher.submit(rows(5))
        assert batcher.timer is None  # no delay is started for requests that already wait
        model.hold.set()
        await asyncio.gather(first, later)  # within the test's timeout, far below LONG_DELAY
        assert answers(later) == [[50.0]]

    assert run(model, scenario) == [4, 1]


def test_a_request_larger_than_max_batch_runs_alone() -> None:
    model = Model()

    async def scenario(batcher: Batcher) -> None:
        big = batcher.submit(rows(1, 2, 3, 4, 5, 6))
        assert batcher.busy
        await big
        assert answers(big) == [[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]]

    assert run(model, scenario) == [6]


def test_a_failed_call_fails_its_callers_and_the_next_batch_still_works() -> None:
    model = Model()

    async def scenario(batcher: Batcher) -> None:
        model.hold.clear()
        poisoned = [batcher.submit(rows(-1, 1)), batcher.submit(rows(2, 3))]  # full: runs at once
        healthy = batcher.submit(rows(7))  # queued behind it
        model.hold.set()
        results = await asyncio.gather(*poisoned, healthy, return_exceptions=True)
        assert [type(r) for r in results[:2]] == [ValueError, ValueError]
        assert str(results[0]) == "negative rows poison the batch"
        assert answers(healthy) == [[70.0]]

    assert run(model, scenario) == [4, 1]


def test_drain_returns_once_every_queued_request_is_answered() -> None:
    model = Model()

    async def scenario(batcher: Batcher) -> None:
        futures = [batcher.submit(rows(v)) for v in (1, 2, 3)]
        assert not batcher.idle
        await batcher.drain()
        assert batcher.idle and all(f.done() for f in futures)

    assert run(model, scenario, max_delay=0.01) == [3]


@pytest.mark.parametrize(
    ("max_batch", "max_delay", "used"), [(0, 0.5, (1, 0.5)), (-3, -1.0, (1, 0.0)), (8, 0.002, (8, 0.002))]
)
def test_settings_below_one_row_or_zero_delay_are_raised_to_them(
    max_batch: int, max_delay: float, used: tuple[int, float]
) -> None:
    batcher = Batcher(Model(), max_batch, max_delay)
    assert (batcher.max_batch, batcher.max_delay) == used
    batcher.close()

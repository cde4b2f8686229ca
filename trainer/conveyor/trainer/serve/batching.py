"""Dynamic batching: requests that arrive together share one model call.

Requests are queued on the event loop. When the model is idle, the first queued request starts a
timer of `max_delay` seconds; the batch is flushed when the timer fires or as soon as `max_batch`
rows are waiting. While the model is busy, requests keep queueing and the next batch is flushed the
moment the current one finishes — those requests have already waited — so under load batches form
without any added delay. A single request larger than `max_batch` rows runs as its own batch.

The model runs on one worker thread (torch releases the GIL while it computes), so the event loop
keeps accepting and parsing requests during inference. Everything else here runs on the loop thread
and needs no locks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

BatchFn = Callable[[np.ndarray], np.ndarray]


class Batcher:
    def __init__(
        self,
        predict: BatchFn,
        max_batch: int,
        max_delay: float,
        on_batch: Callable[[int, float], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.predict = predict
        self.max_batch = max(1, max_batch)
        self.max_delay = max(0.0, max_delay)
        self.on_batch = on_batch
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.pending: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self.pending_rows = 0
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def idle(self) -> bool:
        return not self.busy and not self.pending

    def submit(self, rows: np.ndarray) -> asyncio.Future[np.ndarray]:
        """Queue `rows` ([k, ...]); the future resolves to the model's output for exactly those rows."""
        future: asyncio.Future[np.ndarray] = self.loop.create_future()
        self.pending.append((rows, future))
        self.pending_rows += rows.shape[0]
        if not self.busy:
            if self.pending_rows >= self.max_batch or self.max_delay == 0:
                self._flush()
            elif self.timer is None:
                self.timer = self.loop.call_later(self.max_delay, self._on_timer)
        return future

    def _on_timer(self) -> None:
        self.timer = None
        if not self.busy and self.pending:
            self._flush()

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        items = [self.pending.popleft()]
        rows = items[0][0].shape[0]
        while self.pending and rows + self.pending[0][0].shape[0] <= self.max_batch:
            item = self.pending.popleft()
            rows += item[0].shape[0]
            items.append(item)
        self.pending_rows -= rows
        return items

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        items = self._take()
        batch = items[0][0] if len(items) == 1 else np.concatenate([rows for rows, _ in items])
        self.busy = True
        started = time.perf_counter()
        done = self.loop.run_in_executor(self.executor, self.predict, batch)
        done.add_done_callback(lambda result: self._finished(result, items, batch.shape[0], started))

    def _finished(
        self,
        result: asyncio.Future[np.ndarray],
        items: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]],
        rows: int,
        started: float,
    ) -> None:
        self.busy = False
        if self.on_batch is not None:
            self.on_batch(rows, time.perf_counter() - started)
        error = RuntimeError("inference was cancelled") if result.cancelled() else result.exception()
        if error is not None:
            for _, future in items:
                if not future.done():
                    future.set_exception(error)
        else:
            output = result.result()
            offset = 0
            for part, future in items:
                end = offset + part.shape[0]
                if not future.done():
                    future.set_result(output[offset:end])
                offset = end
        if self.pending:
            self._flush()

    async def drain(self) -> None:
        """Wait until every queued request has been answered."""
        while not self.idle:
            await asyncio.sleep(0.005)

    def close(self) -> None:
        self.executor.shutdown(wait=True)

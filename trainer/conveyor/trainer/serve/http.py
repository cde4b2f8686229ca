"""A small HTTP/1.1 server on asyncio and httptools: just what an inference endpoint needs, fast.

Why not a framework: an infer request spends most of its time in HTTP and routing machinery, not
the model. In this project's benchmark (benchmarks/RESULTS.md, "Serving", the aiohttp ablation) the
same protocol code and batcher served about 2-3x fewer requests/s behind aiohttp's web framework. It supports
keep-alive, pipelining (responses stay in request order), chunked request bodies, a body size limit
enforced from the headers (413 without reading the body), and a graceful drain on shutdown.

A handler gets a `Request` and returns either a `Response` or a `Deferred` — an asyncio future and a
function that turns its result into a `Response` — so the hot path needs no coroutine per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    415: b"Unsupported Media Type",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
JSON = b"application/json"
MAX_PIPELINED = 64
DISCARD_SECONDS = 5.0
IDLE_SECONDS = 65.0  # a connection silent this long (and not waiting on us) is closed
SWEEP_SECONDS = 5.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(slots=True)
class Request:
    method: bytes
    path: str
    headers: dict[bytes, bytes]
    body: bytes
    received: float


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Deferred:
    future: asyncio.Future[Any]
    finish: Callable[[asyncio.Future[Any]], Response]


Handler = Callable[[Request], Response | Deferred]


def render(response: Response, keep_alive: bool, http10: bool) -> bytes:
    head = [
        b"HTTP/1.1 %d %s\r\n" % (response.status, REASONS.get(response.status, b"Unknown")),
        b"content-type: %s\r\ncontent-length: %d\r\n" % (response.content_type, len(response.body)),
    ]
    for name, value in response.headers:
        head.append(b"%s: %s\r\n" % (name, value))
    if not keep_alive:
        head.append(b"connection: close\r\n")
    elif http10:
        head.append(b"connection: keep-alive\r\n")
    head.append(b"\r\n")
    head.append(response.body)
    return b"".join(head)


class Connection(asyncio.Protocol):
    """One client connection: parse requests, hand them to the handler in order, write replies."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[tuple[Request, bool, bool]] = deque()
        self.inflight = False
        self.in_message = False
        self.closing = False
        self.paused = False
        self.last_active = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.rejected = False

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.closing = True

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as error:
            if not self.rejected:
                self._fail(400, f"malformed HTTP request: {error}")

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        self.in_message = True
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        length = self.headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body:
            self._reject_oversized(int(length))
        elif self.headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
            self.transport.write(CONTINUE)  # curl waits a second for this before sending a body

    def on_body(self, body: bytes) -> None:
        if self.rejected:
            return
        self.size += len(body)
        if self.size > self.server.max_body:
            self._reject_oversized(self.size)
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.rejected:
            self._close()
            return
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        method = self.parser.get_method()
        request = Request(method, path, self.headers, b"".join(self.body), time.perf_counter())
        keep_alive = self.parser.should_keep_alive() and not self.server.draining
        http10 = self.parser.get_http_version() == "1.0"
        if self.inflight:
            self.queue.append((request, keep_alive, http10))
            if len(self.queue) >= MAX_PIPELINED and self.transport is not None and not self.paused:
                self.paused = True
                self.transport.pause_reading()
        else:
            self._dispatch(request, keep_alive, http10)

    # --- dispatch and reply ---

    def _dispatch(self, request: Request, keep_alive: bool, http10: bool) -> None:
        self.inflight = True
        try:
            outcome = self.server.handler(request)
        except Exception as error:  # a handler bug must not take the connection (or server) down
            outcome = self.server.internal_error(request, error)
        if isinstance(outcome, Response):
            self._reply(outcome, keep_alive, http10)
        else:
            outcome.future.add_done_callback(
                lambda future: self._finish(outcome, request, future, keep_alive, http10)
            )

    def _finish(
        self,
        deferred: Deferred,
        request: Request,
        future: asyncio.Future[Any],
        keep_alive: bool,
        http10: bool,
    ) -> None:
        try:
            response = deferred.finish(future)
        except Exception as error:
            response = self.server.internal_error(request, error)
        self._reply(response, keep_alive, http10)

    def _reply(self, response: Response, keep_alive: bool, http10: bool) -> None:
        self.inflight = False
        self.last_active = time.monotonic()
        keep_alive = keep_alive and not self.server.draining
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(render(response, keep_alive, http10))
        if not keep_alive:
            self._close()
            return
        if self.queue:
            self._dispatch(*self.queue.popleft())
        elif self.paused:
            self.paused = False
            self.transport.resume_reading()

    def _fail(self, status: int, message: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(render(self.server.error(status, message), False, False))
        self._close()

    def _reject_oversized(self, size: int) -> None:
        """Answer 413 now, then discard the rest of the body (closing at once could reset the socket
        before the client reads the answer) and close."""
        self.rejected = True
        self.body = []
        message = f"request body of {size} bytes exceeds the limit of {self.server.max_body} bytes"
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(render(self.server.error(413, message), False, False))
            asyncio.get_running_loop().call_later(DISCARD_SECONDS, self._close)

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    @property
    def idle(self) -> bool:
        return not self.inflight and not self.queue and not self.in_message

    def close_if_idle(self) -> None:
        if self.idle:
            self._close()

    def close_if_silent(self, now: float) -> None:
        """Idle keep-alive connections and clients that stall mid-request are closed after a while."""
        if not self.inflight and not self.queue and now - self.last_active > self.server.idle_seconds:
            self._close()


class HttpServer:
    """Listens on host:port and serves `handler`; `shutdown()` drains in-flight requests."""

    def __init__(
        self,
        handler: Handler,
        error: Callable[[int, str], Response],
        internal_error: Callable[[Request, Exception], Response],
        max_body: int,
    ) -> None:
        self.handler = handler
        self.error = error
        self.internal_error = internal_error
        self.max_body = max_body
        self.connections: set[Connection] = set()
        self.draining = False
        self.server: asyncio.Server | None = None
        self.idle_seconds = IDLE_SECONDS
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, backlog: int = 2048) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self), host, port, backlog=backlog, reuse_address=True
        )
        self._sweeper = asyncio.create_task(self._sweep())
        sockets = self.server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.close_if_silent(now)

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (up to `timeout`), close every connection."""
        self.draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for connection in list(self.connections):
                connection.close_if_idle()
            if not self.connections:
                break
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection._close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)

"""The inference server: Open Inference Protocol v2 routes over a loaded model directory.

    GET  /v2/health/live | /v2/health/ready        server liveness / readiness (503 while draining)
    GET  /v2                                       server metadata
    GET  /v2/models/{name}[/versions/{v}]          model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready    model readiness
    POST /v2/models/{name}[/versions/{v}]/infer    inference (dynamic batching)
    GET  /metrics                                  Prometheus exposition

Inputs are raw features: the dataset's train-split normalisation is applied here, as in training
(`--inputs normalized` skips it for clients that send already-normalised rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from conveyor.trainer.predictor import Predictor
from conveyor.trainer.serve import protocol
from conveyor.trainer.serve.batching import Batcher
from conveyor.trainer.serve.http import Deferred, HttpServer, Request, Response
from conveyor.trainer.serve.protocol import RequestError, Signature
from conveyor.trainer.serve.telemetry import Telemetry

log = logging.getLogger("conveyor.serve")
VERSION = "1"
SERVER_NAME = "conveyor"
SERVER_VERSION = "0.1.0"
OCTET_STREAM = b"application/octet-stream"
HEADER_LENGTH = b"inference-header-content-length"


@dataclass
class ServeOptions:
    name: str
    port: int  # the defaults of these three are ServingSpec's, applied by the serve command
    max_batch_size: int
    max_latency_ms: float
    host: str = "0.0.0.0"
    max_body_bytes: int = 16 * 1024 * 1024
    raw_inputs: bool = True
    drain_seconds: float = 20.0


def error_response(status: int, message: str) -> Response:
    return Response(status, protocol.error_body(message))


class InferenceServer:
    def __init__(self, predictor: Predictor, options: ServeOptions) -> None:
        self.predictor = predictor
        self.options = options
        self.signature = Signature(
            name=options.name,
            version=VERSION,
            task=predictor.task,
            feature_shape=predictor.feature_shape,
            classes=tuple(predictor.classes),
        )
        self.telemetry = Telemetry(options.name)
        predict = predictor.predict_raw if options.raw_inputs else predictor.predict
        self.batcher = Batcher(
            predict, options.max_batch_size, options.max_latency_ms / 1000.0, on_batch=self.telemetry.batch
        )
        self.http = HttpServer(self.handle, error_response, self.internal_error, options.max_body_bytes)
        self.ready = False
        self._static = self._static_routes()

    def _static_routes(self) -> dict[str, bytes]:
        model = orjson.dumps(self.signature.metadata())
        server = orjson.dumps(
            {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}
        )
        return {"/v2": server, "metadata": model}

    # --- routing ---

    def handle(self, request: Request) -> Response | Deferred:
        path = request.path
        if path.startswith("/v2/models/"):
            return self._model_route(request, path[len("/v2/models/") :])
        if request.method != b"GET":
            message = f"{request.method.decode()} {path} is not allowed"
            return self._count("other", error_response(405, message))
        if path == "/v2/health/live":
            return self._count("live", Response(200, b"{}"))
        if path == "/v2/health/ready":
            return self._count("ready", self._readiness())
        if path in ("/v2", "/v2/"):
            return self._count("server", Response(200, self._static["/v2"]))
        if path == "/metrics":
            return Response(200, self.telemetry.exposition(), self.telemetry.content_type.encode())
        return self._count("other", error_response(404, f"no route {path}; see /v2 and /v2/models/{{name}}"))

    def _model_route(self, request: Request, rest: str) -> Response | Deferred:
        name, _, tail = rest.partition("/")
        if tail.startswith("versions/"):
            version, _, tail = tail[len("versions/") :].partition("/")
            if version != VERSION and name == self.signature.name:
                return self._fail_route(404, f"model {name!r} has no version {version!r}; it has {VERSION!r}")
        if name != self.signature.name:
            message = f"unknown model {name!r}; this server serves {self.signature.name!r}"
            return self._fail_route(404, message)
        if tail == "infer":
            if request.method != b"POST":
                return self._fail_route(405, "infer takes POST")
            return self.infer(request)
        if request.method != b"GET":
            return self._fail_route(405, f"{request.method.decode()} is not allowed here", "model")
        if tail == "":
            return self._count("model", Response(200, self._static["metadata"]))
        if tail == "ready":
            return self._count("model_ready", self._readiness())
        return self._fail_route(404, f"no route {request.path}", "other")

    def _readiness(self) -> Response:
        if self.ready and not self.http.draining:
            return Response(200, b"{}")
        return error_response(503, "not ready" if not self.http.draining else "shutting down")

    def _count(self, endpoint: str, response: Response) -> Response:
        self.telemetry.other(endpoint, response.status)
        return response

    def _fail_route(self, status: int, message: str, endpoint: str = "infer") -> Response:
        if endpoint == "infer":
            self.telemetry.infer(status, 0.0)
        else:
            self.telemetry.other(endpoint, status)
        return error_response(status, message)

    # --- inference ---

    def infer(self, request: Request) -> Response | Deferred:
        if self.http.draining:
            return self._fail_route(503, "shutting down")
        try:
            length = request.headers.get(HEADER_LENGTH)
            header_length = int(length) if length is not None and length.isdigit() else None
            if length is not None and header_length is None:
                raise RequestError(400, "Inference-Header-Content-Length must be a non-negative integer")
            decoded = protocol.decode_request(request.body, header_length, self.signature)
        except RequestError as error:
            self.telemetry.infer(error.status, time.perf_counter() - request.received)
            return error_response(error.status, error.message)
        future = self.batcher.submit(decoded.rows)
        return Deferred(future, lambda done: self._respond(request, decoded, done))

    def _respond(
        self, request: Request, decoded: protocol.InferRequest, done: asyncio.Future[Any]
    ) -> Response:
        error = done.exception()
        if error is not None:
            log.error("inference failed: %s", error, exc_info=error)
            self.telemetry.infer(500, time.perf_counter() - request.received)
            return error_response(500, f"inference failed: {type(error).__name__}: {error}")
        output: np.ndarray = done.result()
        body, header_length = protocol.encode_response(decoded, self.signature, output)
        self.telemetry.infer(200, time.perf_counter() - request.received)
        if header_length is None:
            return Response(200, body)
        return Response(200, body, OCTET_STREAM, [(HEADER_LENGTH, b"%d" % header_length)])

    def internal_error(self, request: Request, error: Exception) -> Response:
        log.error("error handling %s: %s", request.path, error, exc_info=error)
        self.telemetry.infer(500, 0.0)
        return error_response(500, f"internal error: {type(error).__name__}")

    # --- lifecycle ---

    def warm_up(self) -> None:
        """One model call before accepting traffic, so the first client does not pay for lazy init."""
        rows = np.zeros((1, *self.predictor.feature_shape), dtype=np.float32)
        self.batcher.predict(rows)
        self.ready = True

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        port = await self.http.start(self.options.host, self.options.port)
        log.warning(
            "serving model %r on http://%s:%d (max batch %d, max delay %.1f ms)",
            self.signature.name, self.options.host, port, self.options.max_batch_size,
            self.options.max_latency_ms,
        )
        event = {"event": "serving", "model": self.signature.name, "port": port}
        print(orjson.dumps(event).decode(), flush=True)
        await stop.wait()
        log.warning("shutting down: draining in-flight requests")
        await self.http.shutdown(self.options.drain_seconds)
        await self.batcher.drain()
        self.batcher.close()
        log.warning("stopped")

"""Prometheus metrics of the inference server, in a registry of its own (no process-global state).

Children for the label values the hot path uses are created once, so recording a request costs a
couple of lock-free-ish increments rather than a label lookup.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Telemetry:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "conveyor_inference_requests", "HTTP requests by endpoint and status code",
            ["model", "endpoint", "code"], registry=self.registry,
        )
        self.errors = Counter(
            "conveyor_inference_errors", "Failed infer requests by kind (client: 4xx, server: 5xx)",
            ["model", "kind"], registry=self.registry,
        )
        self.latency = Histogram(
            "conveyor_inference_request_duration_seconds", "Infer request latency, body received to reply",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        ).labels(model)
        self.batch_size = Histogram(
            "conveyor_inference_batch_size", "Rows per model call (dynamic batching)",
            ["model"], buckets=BATCH_BUCKETS, registry=self.registry,
        ).labels(model)
        self.batch_duration = Histogram(
            "conveyor_inference_batch_duration_seconds", "Model call duration per batch",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        ).labels(model)
        self.model = model
        self._infer_ok = self.requests.labels(model, "infer", "200")
        self._client_errors = self.errors.labels(model, "client")
        self._server_errors = self.errors.labels(model, "server")

    def infer(self, status: int, seconds: float) -> None:
        if status == 200:
            self._infer_ok.inc()
        else:
            self.requests.labels(self.model, "infer", str(status)).inc()
            (self._client_errors if status < 500 else self._server_errors).inc()
        self.latency.observe(seconds)

    def other(self, endpoint: str, status: int) -> None:
        self.requests.labels(self.model, endpoint, str(status)).inc()

    def batch(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.batch_duration.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

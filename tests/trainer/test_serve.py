"""serve: the real server in a subprocess, spoken to with tritonclient (an existing OIP v2 client) and
with raw HTTP for requests no well-behaved client would send."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conveyor.trainer.predictor import load_predictor
from tests.trainer.tiny_models import make_data_dir, make_model_dir

MAX_BODY = 100_000


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, concurrency: int = 1) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.url, concurrency=concurrency, network_timeout=30)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[1].decode()


def start(model: Path, log: Path, *extra: str) -> Server:
    command = [sys.executable, "-m", "conveyor.trainer", "serve", "--model", str(model),
               "--host", "127.0.0.1", "--port", "0", "--threads", "1",
               "--max-body-bytes", str(MAX_BODY), *extra]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    return Server(process, 0, log)


def wait_ready(server: Server, timeout: float = 90) -> Server:
    assert server.process.stdout is not None
    line = server.process.stdout.readline()  # the "serving" event, printed once listening
    if not line:
        raise AssertionError(f"server exited: {server.log.read_text()}")
    server.port = json.loads(line)["port"]
    deadline = time.monotonic() + timeout
    while not server.client().is_server_ready():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    return server


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    make_model_dir(root / "model", make_data_dir(root), hidden=64, steps=60)
    return root


@pytest.fixture(scope="module")
def servers(run_dir: Path) -> Iterator[tuple[Server, Server]]:
    # Both start at once: process start-up (torch import) dominates, and runs in parallel.
    plain = start(run_dir / "model", run_dir / "plain.log", "--max-batch-size", "16",
                  "--max-latency-ms", "50")
    int8 = start(run_dir / "model", run_dir / "int8.log", "--quantization", "int8", "--name", "digits",
                 "--max-latency-ms", "300")
    try:
        yield wait_ready(plain), wait_ready(int8)
    finally:
        stop(plain)
        stop(int8)


@pytest.fixture(scope="module")
def server(servers: tuple[Server, Server]) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def raw_rows(run_dir: Path) -> np.ndarray:
    """Raw (un-normalised) test rows: what a serving client sends."""
    predictor = load_predictor(run_dir / "model")
    with np.load(run_dir / "data" / "test.npz") as arrays:
        x = arrays["x"][:20]
    stats = predictor.metadata.normalization
    raw: np.ndarray = x * np.asarray(stats.scale, np.float32) + np.asarray(stats.shift, np.float32)
    return raw.astype(np.float32)


def infer(
    client: triton.InferenceServerClient, model: str, rows: np.ndarray, binary: bool, datatype: str = "FP32"
) -> triton.InferResult:
    tensor = triton.InferInput("input", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows, binary_data=binary)
    names = ("probabilities", "label", "class")
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in names]
    return client.infer(model, [tensor], outputs=outputs, request_id="r-1")


def test_health_and_metadata(server: Server) -> None:
    client = server.client()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("model") and client.is_model_ready("model", "1")
    assert not client.is_model_ready("nope")
    metadata = client.get_model_metadata("model")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label", "class"]
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_the_model(server: Server, run_dir: Path, raw_rows: np.ndarray, binary: bool) -> None:
    expected = load_predictor(run_dir / "model").predict_raw(raw_rows)
    result = infer(server.client(), "model", raw_rows, binary)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (20, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("label"), expected.argmax(1))
    assert [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("class")] == [
        str(i) for i in expected.argmax(1)
    ]
    assert result.get_response()["id"] == "r-1"


def test_other_numeric_types_and_shapes_are_converted(server: Server, raw_rows: np.ndarray) -> None:
    client = server.client()
    reference = infer(client, "model", raw_rows, False).as_numpy("probabilities")
    as_fp64 = infer(client, "model", raw_rows.astype(np.float64), True, "FP64").as_numpy("probabilities")
    np.testing.assert_allclose(as_fp64, reference, atol=1e-6)
    pixels = np.rint(raw_rows).astype(np.int32)  # digits' raw features are integer pixel values
    as_int = infer(client, "model", pixels.reshape(20, 8, 8), False, "INT32").as_numpy("probabilities")
    np.testing.assert_allclose(as_int, reference, atol=1e-4)


def post(server: Server, payload: object, model: str = "model") -> tuple[int, str]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, reply = server.request("POST", f"/v2/models/{model}/infer", body)
    return status, json.loads(reply)["error"] if status != 200 else reply.decode()


def tensor(shape: list[int], data: object, datatype: str = "FP32") -> dict[str, object]:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]}


BAD_REQUESTS = [
    ("malformed JSON", b'{"inputs": [', 400, "malformed JSON"),
    ("not an object", b"[1, 2]", 400, "JSON object"),
    ("no inputs", {"outputs": []}, 400, "exactly one input"),
    ("wrong shape", tensor([1, 63], [0.0] * 63), 400, r"does not match \[-1, 64\]"),
    ("data/shape disagree", tensor([2, 64], [0.0] * 64), 400, "has 64 values but shape"),
    ("wrong datatype", tensor([1, 64], ["a"] * 64, "BYTES"), 400, "datatype 'BYTES' is not supported"),
    ("strings as FP32", tensor([1, 64], ["x"] * 64), 400, "not a list of FP32 numbers"),
    ("ragged data", tensor([2, 64], [[0.0] * 64, [0.0] * 3]), 400, "FP32 numbers"),
    ("NaN", b'{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[NaN]}]}', 400, "malformed"),
    ("unknown output", {**tensor([1, 64], [0.0] * 64), "outputs": [{"name": "logits"}]}, 400,
     "unknown output 'logits'"),
    ("wrong input name", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]},
     400, "unknown input 'x'"),
]


@pytest.mark.parametrize(
    ("name", "payload", "status", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_get_4xx_with_a_message(
    server: Server, name: str, payload: object, status: int, message: str
) -> None:
    got, error = post(server, payload)
    assert got == status and re.search(message, error), error
    assert server.client().is_server_live()


def test_non_finite_binary_input_is_rejected(server: Server, raw_rows: np.ndarray) -> None:
    rows = raw_rows[:2].copy()
    rows[1, 5] = np.nan
    with pytest.raises(InferenceServerException, match="NaN or infinity"):
        infer(server.client(), "model", rows, binary=True)
    assert server.client().is_server_live()


def test_unknown_model_version_route_and_method(server: Server) -> None:
    assert post(server, tensor([1, 64], [0.0] * 64), model="other") == (404, "unknown model 'other'; "
                                                                        "this server serves 'model'")
    status, body = server.request("POST", "/v2/models/model/versions/7/infer", b"{}")
    assert status == 404 and "no version '7'" in json.loads(body)["error"]
    assert server.request("GET", "/v2/models/model/infer")[0] == 405
    assert server.request("GET", "/nowhere")[0] == 404
    body = json.dumps(tensor([1, 64], [1.0] * 64)).encode()
    ok = server.request("POST", "/v2/models/model/versions/1/infer", body)
    assert ok[0] == 200


def test_oversized_body_is_rejected_from_its_headers(server: Server) -> None:
    status, reply = post(server, b"0" * (MAX_BODY + 1))
    assert status == 413 and "exceeds the limit of 100000 bytes" in reply
    assert server.client().is_server_live()


def test_garbage_http_is_answered_and_the_server_survives(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400")
    assert server.client().is_server_live()


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def raw(body: bytes, extra: bytes = b"", model: str = "model") -> bytes:
    """An infer request as bytes on the wire; `extra` holds more header lines."""
    return (b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\ncontent-length: %d\r\n%s\r\n"
            % (model.encode(), len(body), extra)) + body


def test_pipelined_requests_are_answered_in_order_and_expect_continue(server: Server) -> None:
    good = json.dumps({"id": "first", **tensor([1, 64], [1.0] * 64)}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw(good) + raw(b"{oops") + raw(good.replace(b"first", b"third")))
        received = b""
        while received.count(b"HTTP/1.1 ") < 3:
            received += sock.recv(65536)
        first, second, third = (received.index(m) for m in (b'"id":"first"', b"malformed", b'"id":"third"'))
        assert first < second < third
        head = raw(b"", b"expect: 100-continue\r\n").replace(b"content-length: 0", b"content-length: 2")
        sock.sendall(head)
        assert sock.recv(1024) == CONTINUE  # before we send the body
        sock.sendall(b"{}")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")


def test_concurrent_requests_are_batched(server: Server, raw_rows: np.ndarray) -> None:
    def histogram_count(text: str) -> float:
        match = re.search(r'^conveyor_inference_batch_size_count\{model="model"\} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    reference = infer(server.client(), "model", raw_rows, False).as_numpy("label")
    before = histogram_count(server.metrics())
    callers = 20
    barrier = threading.Barrier(callers)
    labels: dict[int, int] = {}

    def call(i: int) -> None:
        client = server.client()
        tensor_ = triton.InferInput("input", [1, 64], "FP32")
        tensor_.set_data_from_numpy(raw_rows[i : i + 1])
        barrier.wait()
        labels[i] = int(client.infer("model", [tensor_]).as_numpy("label")[0])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert labels == {i: reference[i] for i in range(callers)}  # each caller gets its own row's answer
    batches = histogram_count(server.metrics()) - before
    assert 1 <= batches <= callers / 2, f"{batches} model calls for {callers} concurrent requests"
    text = server.metrics()
    ok = r'conveyor_inference_requests_total\{code="200",endpoint="infer",model="model"\} \d'
    assert re.search(ok, text)
    assert "conveyor_inference_request_duration_seconds_bucket" in text


def test_int8_quantization_nearly_agrees(servers: tuple[Server, Server], raw_rows: np.ndarray) -> None:
    plain, int8 = servers
    exact = infer(plain.client(), "model", raw_rows, True).as_numpy("probabilities")
    approx = infer(int8.client(), "digits", raw_rows, True).as_numpy("probabilities")
    assert np.abs(approx - exact).mean() < 0.01
    assert (approx.argmax(1) == exact.argmax(1)).mean() >= 0.95


def responses(stream: bytes) -> list[tuple[bytes, Any]]:
    """(status line, JSON body) of each HTTP response in `stream`, interim 100 Continue left out."""
    stream = stream.replace(CONTINUE, b"")
    found = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        match = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        assert match, head
        length = int(match.group(1))
        found.append((head.split(b"\r\n")[0], json.loads(rest[:length])))
        stream = rest[length:]
    return found


def test_sigterm_drains_in_flight_requests_then_exits(
    servers: tuple[Server, Server], raw_rows: np.ndarray
) -> None:
    _, int8 = servers  # its 300 ms batching delay keeps a request in flight while we signal
    body = {**tensor([2, 64], raw_rows[:2].ravel().tolist()), "outputs": [{"name": "label"}]}
    infer_request = raw(json.dumps(body).encode(), model="digits")
    # Pipelined behind it, a request with an Expect header: the server sends 100 Continue as it parses
    # that header, after everything before it, so from then on the infer request is in the batcher.
    marker = raw(b"{}", b"expect: 100-continue\r\n", model="digits")
    received = b""
    with socket.create_connection(("127.0.0.1", int8.port), timeout=20) as sock:
        sock.sendall(infer_request + marker)
        while CONTINUE not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        int8.process.send_signal(signal.SIGTERM)
        while chunk := sock.recv(65536):
            received += chunk
    assert int8.process.wait(20) == 0
    answered = responses(received)
    assert answered[0][0] == b"HTTP/1.1 200 OK", answered
    [label] = answered[0][1]["outputs"]
    assert label["name"] == "label" and label["shape"] == [2] and all(0 <= c < 10 for c in label["data"])
    assert "draining" in int8.log.read_text()
    with pytest.raises(Exception):  # noqa: B017 - any connection error: nobody listens any more
        int8.client().is_server_live()

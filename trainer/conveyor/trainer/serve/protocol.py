"""The Open Inference Protocol v2 payloads: decode an infer request, encode its response.

Pure functions over bytes, numpy and the model's signature, so every rule about what a request may
contain is table-testable without a socket. The JSON tensor form and the `binary_tensor_data`
extension (what `tritonclient` sends and asks for by default) are both understood:

- request: a JSON header, optionally followed by raw tensors when the `Inference-Header-Content-Length`
  header gives the JSON length; an input with `parameters.binary_data_size` reads its bytes from there.
- response: outputs as JSON `data`, or as raw bytes after the JSON header when the request asked for
  `parameters.binary_data` on an output (or `binary_data_output` on the request).

The model has one input, `input`, `[n, *feature_shape]` (any numeric datatype is converted to FP32;
`[n, F]` with the same number of values per row and `[F]` for one row are accepted). Outputs:
classification `probabilities` (FP32 `[n, classes]`), `label` (INT64 `[n]`, the class index) and
`class` (BYTES `[n]`, the class name); regression `prediction` (FP32 `[n]`). Every violation is a
`RequestError` carrying the HTTP status and a message that says what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

INPUT_NAME = "input"
NUMERIC_DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


class RequestError(Exception):
    """A client mistake: becomes `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Signature:
    """What the served model accepts and returns."""

    name: str
    version: str
    task: str
    feature_shape: tuple[int, ...]
    classes: tuple[str, ...] = ()

    @property
    def features(self) -> int:
        return math.prod(self.feature_shape)

    @property
    def outputs(self) -> tuple[tuple[str, str, list[int]], ...]:
        """(name, datatype, shape) of every output."""
        if self.task == "classification":
            return (
                ("probabilities", "FP32", [-1, len(self.classes)]),
                ("label", "INT64", [-1]),
                ("class", "BYTES", [-1]),
            )
        return (("prediction", "FP32", [-1]),)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "conveyor_pytorch",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *self.feature_shape]}],
            "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in self.outputs],
        }


@dataclass
class InferRequest:
    rows: np.ndarray  # float32 [n, *feature_shape]
    id: str | None = None
    outputs: list[str] = field(default_factory=list)  # requested, in order; empty: all
    binary: set[str] = field(default_factory=set)  # outputs to return as raw bytes


def _loads(data: bytes | memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise RequestError(400, f"malformed JSON in the request body: {error}") from None


def decode_request(body: bytes, header_length: int | None, signature: Signature) -> InferRequest:
    """Parse and validate an infer request body (JSON, or JSON + binary tensors)."""
    if header_length is not None:
        if not 0 <= header_length <= len(body):
            raise RequestError(
                400, f"Inference-Header-Content-Length {header_length} exceeds the body ({len(body)} bytes)"
            )
        view = memoryview(body)
        payload, binary = _loads(view[:header_length]), view[header_length:]
    else:
        payload, binary = _loads(body), memoryview(b"")
    if not isinstance(payload, dict):
        raise RequestError(400, "the request body must be a JSON object with an 'inputs' list")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, f"expected exactly one input named {INPUT_NAME!r} in 'inputs'")
    rows = decode_input(inputs[0], binary, signature)
    request_id = payload.get("id")
    outputs, binary_outputs = requested_outputs(payload, signature)
    return InferRequest(rows, str(request_id) if request_id is not None else None, outputs, binary_outputs)


def decode_input(tensor: dict[str, Any], binary: memoryview, signature: Signature) -> np.ndarray:
    name = tensor.get("name")
    if name != INPUT_NAME:
        raise RequestError(400, f"unknown input {name!r}; this model has one input named {INPUT_NAME!r}")
    datatype = tensor.get("datatype")
    dtype = NUMERIC_DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise RequestError(
            400, f"input datatype {datatype!r} is not supported; send FP32 (or another numeric type: "
            f"{', '.join(NUMERIC_DATATYPES)})"
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(400, f"input shape must be a list of non-negative integers, got {shape!r}")
    rows = row_count(shape, signature)
    count = math.prod(shape)
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        itemsize = np.dtype(dtype).itemsize
        if type(size) is not int or size != count * itemsize or size > len(binary):
            raise RequestError(
                400, f"binary_data_size {size!r} does not match shape {shape} of {datatype} "
                f"({count * itemsize} bytes; {len(binary)} bytes follow the JSON header)"
            )
        array = np.frombuffer(binary[:size], dtype=dtype)
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise RequestError(400, "input has no 'data' list (nor binary_data_size parameter)")
        try:
            array = np.asarray(data, dtype=dtype)
        except (ValueError, TypeError, OverflowError):
            raise RequestError(400, f"input data is not a list of {datatype} numbers") from None
        if array.size != count:
            raise RequestError(400, f"input data has {array.size} values but shape {shape} needs {count}")
    shaped = array.reshape((rows, *signature.feature_shape))
    result: np.ndarray = shaped.astype(np.float32, copy=False)
    if not np.isfinite(result).all():
        raise RequestError(400, "input data contains NaN or infinity")
    return result


def row_count(shape: list[int], signature: Signature) -> int:
    """Rows of a batch `[n, *feature_shape]`, `[n, F]` or a single `[F]`; error otherwise."""
    expected = [-1, *signature.feature_shape]
    if len(shape) == 1 and shape[0] == signature.features:
        return 1
    if len(shape) >= 2 and math.prod(shape[1:]) == signature.features:
        if shape[0] == 0:
            raise RequestError(400, "input has no rows")
        return shape[0]
    raise RequestError(
        400, f"input shape {shape} does not match {expected} (or [-1, {signature.features}] flattened)"
    )


def requested_outputs(payload: dict[str, Any], signature: Signature) -> tuple[list[str], set[str]]:
    known = [name for name, _, _ in signature.outputs]
    parameters = payload.get("parameters")
    binary_all = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    requested = payload.get("outputs")
    if requested is None:
        return known, set(known) if binary_all else set()
    if not isinstance(requested, list):
        raise RequestError(400, "'outputs' must be a list of {\"name\": ...} objects")
    names, binary = [], set()
    for output in requested:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in known:
            raise RequestError(400, f"unknown output {name!r}; this model returns {', '.join(known)}")
        names.append(name)
        params = output.get("parameters") or {}
        if binary_all or (isinstance(params, dict) and params.get("binary_data") is True):
            binary.add(name)
    return names, binary


def serialize_bytes(values: list[str]) -> bytes:
    """BYTES tensor elements in binary form: a 4-byte little-endian length before each."""
    parts = []
    for value in values:
        encoded = value.encode()
        parts += [len(encoded).to_bytes(4, "little"), encoded]
    return b"".join(parts)


def encode_response(
    request: InferRequest, signature: Signature, output: np.ndarray
) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary tensors, the length of its JSON header."""
    n = output.shape[0]
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in request.outputs:
        value: Any
        if name == "probabilities":
            datatype, shape, value = "FP32", [n, output.shape[1]], output
        elif name == "label":
            datatype, shape, value = "INT64", [n], output.argmax(axis=1).astype(np.int64)
        elif name == "class":
            labels = output.argmax(axis=1).tolist()
            datatype, shape, value = "BYTES", [n], [signature.classes[i] for i in labels]
        else:
            datatype, shape, value = "FP32", [n], output
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if name in request.binary:
            blob = serialize_bytes(value) if datatype == "BYTES" else np.ascontiguousarray(value).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = value.ravel() if isinstance(value, np.ndarray) else value
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": signature.name, "model_version": signature.version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = tensors
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})

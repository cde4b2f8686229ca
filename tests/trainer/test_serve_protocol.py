"""serve.protocol without a socket: what an Open Inference Protocol v2 infer request may hold (every
violation a 400 with a message saying what was expected), how inputs become FP32 rows, and responses
as JSON or with binary tensors that the stock `tritonclient` parses."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from conveyor.trainer.serve.protocol import (
    InferRequest,
    RequestError,
    Signature,
    decode_request,
    encode_response,
    error_body,
    serialize_bytes,
)

CLASSIFIER = Signature("flowers", "1", "classification", (4,), ("setosa", "versicolor", "virginica"))
REGRESSOR = Signature("houses", "3", "regression", (2, 2))
ROWS = np.array([[0.5, 1.0, -2.0, 3.25], [4.0, 0.0, 1.5, -0.75]], np.float32)


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


def infer_input(shape: object, data: object, datatype: object = "FP32", **extra: object) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data, **extra}]}


def with_binary(header: dict[str, Any], blob: bytes) -> tuple[bytes, int]:
    """JSON header + raw tensor bytes, and the header's length (Inference-Header-Content-Length)."""
    head = body(header)
    return head + blob, len(head)


FOUR = [0.0, 1.0, 2.0, 3.0]

# (id, request body, Inference-Header-Content-Length, a regular expression the 400's message matches)
BAD_REQUESTS: list[tuple[str, bytes, int | None, str]] = [
    ("malformed JSON", b'{"inputs": [', None, "^malformed JSON in the request body"),
    ("header length beyond the body", b"{}", 3, r"Header-Content-Length 3 exceeds the body \(2 bytes\)"),
    ("negative header length", b"{}", -1, "Inference-Header-Content-Length -1 exceeds"),
    ("not an object", b"[1, 2]", None, "must be a JSON object with an 'inputs' list"),
    ("no inputs", body({"outputs": []}), None, "expected exactly one input named 'input'"),
    ("two inputs", body({"inputs": [{"name": "input"}] * 2}), None, "exactly one input"),
    ("input not an object", body({"inputs": ["input"]}), None, "exactly one input"),
    ("wrong input name", body({"inputs": [{"name": "x"}]}), None, "unknown input 'x'; this model has one"),
    ("unsupported datatype", body(infer_input([1, 4], ["a"] * 4, "BYTES")), None, "datatype 'BYTES' is not"),
    ("no datatype", body(infer_input([1, 4], FOUR, None)), None, "datatype None is not supported; send FP32"),
    ("shape not a list", body(infer_input(4, FOUR)), None, "shape must be a list of non-negative integers"),
    ("empty shape", body(infer_input([], FOUR)), None, r"non-negative integers, got \[\]"),
    ("negative dimension", body(infer_input([-1, 4], FOUR)), None, "non-negative integers"),
    ("boolean dimension", body(infer_input([True, 4], FOUR)), None, "non-negative integers"),
    ("wrong features", body(infer_input([1, 3], FOUR[:3])), None, r"shape \[1, 3\] does not match \[-1, 4\]"),
    ("one row of the wrong size", body(infer_input([5], [*FOUR, 4.0])), None, r"\[5\] does not match"),
    ("no rows", body(infer_input([0, 4], [])), None, "input has no rows"),
    ("no data", body({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32"}]}), None,
     "no 'data' list"),
    ("strings as FP32", body(infer_input([1, 4], ["x"] * 4)), None, "not a list of FP32 numbers"),
    ("ragged data", body(infer_input([2, 4], [FOUR, FOUR[:1]])), None, "not a list of FP32 numbers"),
    ("too few values", body(infer_input([2, 4], FOUR)), None, r"has 4 values but shape \[2, 4\] needs 8"),
    ("outputs not a list", body({**infer_input([1, 4], FOUR), "outputs": "label"}), None,
     "'outputs' must be a list"),
    ("unknown output", body({**infer_input([1, 4], FOUR), "outputs": [{"name": "logits"}]}), None,
     "unknown output 'logits'; this model returns probabilities, label, class"),
    (
        "binary size disagrees with the shape",
        *with_binary(infer_input([1, 4], None, parameters={"binary_data_size": 8}), bytes(16)),
        r"binary_data_size 8 does not match shape \[1, 4\] of FP32 \(16 bytes; 16 bytes follow",
    ),
    (
        "binary bytes missing",
        *with_binary(infer_input([1, 4], None, parameters={"binary_data_size": 16}), bytes(8)),
        "8 bytes follow the JSON header",
    ),
    (
        "non-finite binary input",
        *with_binary(
            infer_input([1, 4], None, parameters={"binary_data_size": 16}),
            np.array([0, np.inf, 0, 0], np.float32).tobytes(),
        ),
        "NaN or infinity",
    ),
]


@pytest.mark.parametrize(
    ("payload", "header_length", "message"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_a_bad_request_is_a_400_saying_what_was_expected(
    payload: bytes, header_length: int | None, message: str
) -> None:
    with pytest.raises(RequestError) as caught:
        decode_request(payload, header_length, CLASSIFIER)
    assert caught.value.status == 400
    assert re.search(message, caught.value.message), caught.value.message


# (id, input datatype, shape, data): each decodes to ROWS as FP32 [2, 4].
GOOD_INPUTS = [
    ("FP32 batch", "FP32", [2, 4], ROWS.ravel().tolist()),
    ("nested data", "FP32", [2, 4], ROWS.tolist()),
    ("FP64", "FP64", [2, 4], ROWS.astype(np.float64).ravel().tolist()),
    ("features as [2, 2]", "FP32", [2, 2, 2], ROWS.ravel().tolist()),
]


@pytest.mark.parametrize(
    ("datatype", "shape", "data"), [c[1:] for c in GOOD_INPUTS], ids=[c[0] for c in GOOD_INPUTS]
)
def test_json_inputs_become_fp32_rows(datatype: str, shape: list[int], data: object) -> None:
    request = decode_request(body(infer_input(shape, data, datatype)), None, CLASSIFIER)
    assert request.rows.dtype == np.float32
    np.testing.assert_array_equal(request.rows, ROWS)


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT32", [1, -2, 3, 4], [1.0, -2.0, 3.0, 4.0]),
        ("UINT8", [0, 255, 7, 1], [0.0, 255.0, 7.0, 1.0]),
        ("BOOL", [True, False, True, False], [1.0, 0.0, 1.0, 0.0]),
        ("FP16", [0.5, 1.5, -2.0, 8.0], [0.5, 1.5, -2.0, 8.0]),
    ],
)
def test_any_numeric_datatype_is_converted(datatype: str, data: list[Any], expected: list[float]) -> None:
    request = decode_request(body(infer_input([1, 4], data, datatype)), None, CLASSIFIER)
    assert request.rows.dtype == np.float32
    assert request.rows.tolist() == [expected]


def test_a_single_row_may_come_without_the_batch_dimension() -> None:
    request = decode_request(body(infer_input([4], FOUR)), None, CLASSIFIER)
    assert request.rows.shape == (1, 4) and request.rows.tolist() == [FOUR]


def test_rows_take_the_models_feature_shape() -> None:
    request = decode_request(body(infer_input([3, 4], list(range(12)))), None, REGRESSOR)
    assert request.rows.shape == (3, 2, 2)
    assert request.rows[1].tolist() == [[4.0, 5.0], [6.0, 7.0]]


def test_binary_inputs_as_tritonclient_sends_them() -> None:
    tensor = triton.InferInput("input", [2, 4], "FP64")
    tensor.set_data_from_numpy(ROWS.astype(np.float64), binary_data=True)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=True),
        triton.InferRequestedOutput("class", binary_data=False),
    ]
    payload, header_length = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id="r-9"
    )
    request = decode_request(payload, header_length, CLASSIFIER)
    np.testing.assert_array_equal(request.rows, ROWS)
    assert request.id == "r-9"
    assert request.outputs == ["label", "class"] and request.binary == {"label"}


@pytest.mark.parametrize(
    ("extra", "outputs", "binary"),
    [
        ({}, ["probabilities", "label", "class"], set()),
        ({"parameters": {"binary_data_output": True}}, ["probabilities", "label", "class"],
         {"probabilities", "label", "class"}),
        ({"outputs": [{"name": "class"}, {"name": "label"}]}, ["class", "label"], set()),
        ({"outputs": [{"name": "label", "parameters": {"binary_data": True}}]}, ["label"], {"label"}),
        ({"outputs": [{"name": "label"}], "parameters": {"binary_data_output": True}}, ["label"], {"label"}),
    ],
    ids=["all by default", "all binary", "as requested in order", "one binary", "binary for all requested"],
)
def test_requested_outputs(extra: dict[str, Any], outputs: list[str], binary: set[str]) -> None:
    request = decode_request(body({**infer_input([1, 4], FOUR), **extra}), None, CLASSIFIER)
    assert request.outputs == outputs and request.binary == binary


@pytest.mark.parametrize(("sent", "kept"), [({"id": "a-1"}, "a-1"), ({"id": 7}, "7"), ({}, None)])
def test_the_request_id_is_kept_as_a_string(sent: dict[str, Any], kept: str | None) -> None:
    assert decode_request(body({**infer_input([1, 4], FOUR), **sent}), None, CLASSIFIER).id == kept


PROBABILITIES = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)


def test_classification_response_as_json() -> None:
    request = InferRequest(ROWS, "r-1", ["probabilities", "label", "class"])
    payload, header_length = encode_response(request, CLASSIFIER, PROBABILITIES)
    assert header_length is None
    response = json.loads(payload)
    assert (response["model_name"], response["model_version"], response["id"]) == ("flowers", "1", "r-1")
    probabilities, label, name = response["outputs"]
    assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [2, 3]
    np.testing.assert_allclose(probabilities["data"], PROBABILITIES.ravel())
    assert label == {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]}
    assert name == {"name": "class", "datatype": "BYTES", "shape": [2], "data": ["setosa", "virginica"]}


def test_only_the_requested_outputs_in_the_requested_order_and_no_id_when_none_was_sent() -> None:
    payload, _ = encode_response(InferRequest(ROWS, None, ["class", "label"]), CLASSIFIER, PROBABILITIES)
    response = json.loads(payload)
    assert "id" not in response
    assert [o["name"] for o in response["outputs"]] == ["class", "label"]


def test_regression_response_is_one_prediction_per_row() -> None:
    request = InferRequest(np.zeros((3, 2, 2), np.float32), None, ["prediction"])
    payload, _ = encode_response(request, REGRESSOR, np.array([1.5, -2.0, 0.25], np.float32))
    [prediction] = json.loads(payload)["outputs"]
    assert prediction == {"name": "prediction", "datatype": "FP32", "shape": [3], "data": [1.5, -2.0, 0.25]}


def test_binary_outputs_follow_the_json_header_and_tritonclient_reads_them() -> None:
    outputs = ["probabilities", "label", "class"]
    request = InferRequest(ROWS, "r-2", outputs, binary={"probabilities", "class"})
    payload, header_length = encode_response(request, CLASSIFIER, PROBABILITIES)
    assert header_length is not None
    header = json.loads(payload[:header_length])
    sizes = {o["name"]: o.get("parameters", {}).get("binary_data_size") for o in header["outputs"]}
    names = serialize_bytes(["setosa", "virginica"])
    assert sizes == {"probabilities": 24, "label": None, "class": len(names)}
    assert len(payload) == header_length + sizes["probabilities"] + sizes["class"]
    result = triton.InferResult.from_response_body(payload, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), PROBABILITIES)
    assert result.as_numpy("label").tolist() == [0, 2]
    assert [c.decode() for c in result.as_numpy("class")] == ["setosa", "virginica"]


def test_bytes_elements_carry_a_little_endian_length() -> None:
    assert serialize_bytes(["ab", "", "é"]) == (
        struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 2) + "é".encode()
    )


def test_model_metadata_describes_input_and_outputs() -> None:
    assert CLASSIFIER.metadata() == {
        "name": "flowers",
        "versions": ["1"],
        "platform": "conveyor_pytorch",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "class", "datatype": "BYTES", "shape": [-1]},
        ],
    }
    metadata = REGRESSOR.metadata()
    assert metadata["inputs"][0]["shape"] == [-1, 2, 2]
    assert metadata["outputs"] == [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]


def test_error_body_is_the_oip_error_object() -> None:
    assert json.loads(error_body('unknown model "x"')) == {"error": 'unknown model "x"'}

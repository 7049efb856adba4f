"""gRPC tensors to rows and back, and the HTTP errors as gRPC status codes: the same checks and messages as the
JSON V2 body (parse_v2), for the same requests."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest

from deploy.serving.grpc import status, tensors
from deploy.serving.grpc.v2 import grpc_predict_v2_pb2 as pb
from deploy.serving.payload import ClientError, parse_v2

NAMES = ["a", "b", "c"]
ROWS = np.array([[1.0, 2.5, -3.0], [4.0, 5.0, 6.0]], dtype=np.float32)


def request(
    datatype: str = "FP32",
    shape: list[int] | None = None,
    values: Any = ROWS,
    outputs: tuple[str, ...] = (),
    raw: bytes | None = None,
    inputs: int = 1,
) -> pb.ModelInferRequest:
    """A ModelInfer request: values in the datatype's contents field, or ``raw`` bytes."""
    shape = list(np.shape(values)) if shape is None else shape
    message = pb.ModelInferRequest(model_name="m", id="r1")
    for i in range(inputs):
        tensor = message.inputs.add(name=f"input-{i}", datatype=datatype, shape=shape)
        if raw is None and datatype in tensors.CONTENTS_FIELD:
            tensor.contents.CopyFrom(tensors.contents(datatype, np.asarray(values)))
    if raw is not None:
        message.raw_input_contents.append(raw)
    for name in outputs:
        message.outputs.add(name=name)
    return message


def json_body(datatype: str = "FP32", shape: list[int] | None = None, values: Any = ROWS, **more: Any) -> bytes:
    shape = list(np.shape(values)) if shape is None else shape
    tensor = {"name": "input-0", "shape": shape, "datatype": datatype, "data": np.asarray(values).reshape(-1).tolist()}
    return json.dumps({"inputs": [tensor], **more}).encode()


def error_of(call: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def test_contents_and_raw_contents_give_the_json_bodys_matrix() -> None:
    expected, _ = parse_v2(json_body(), NAMES, max_batch=4)
    for datatype in ("FP32", "FP64"):
        decoded = tensors.decode(request(datatype), NAMES, max_batch=4)
        assert decoded.rows.dtype == np.float32 and decoded.rows.flags["C_CONTIGUOUS"] and not decoded.raw
        np.testing.assert_array_equal(decoded.rows, expected)
    for datatype in ("FP16", "FP32", "FP64"):
        raw = ROWS.astype(tensors.RAW_DTYPE[datatype]).tobytes()
        decoded = tensors.decode(request(datatype, shape=[2, 3], raw=raw), NAMES, max_batch=4)
        assert decoded.raw and decoded.rows.flags["WRITEABLE"]  # torch.from_numpy warns on read-only buffers
        np.testing.assert_array_equal(decoded.rows, expected)
    whole = np.array([[1, -2, 3]])
    for datatype in ("INT8", "INT32", "INT64", "UINT64"):
        values = np.abs(whole) if datatype.startswith("U") else whole
        decoded = tensors.decode(request(datatype, values=values), NAMES, max_batch=4)
        np.testing.assert_array_equal(decoded.rows, values.astype(np.float32))
    one_row = tensors.decode(request(shape=[3], values=ROWS[0]), NAMES, max_batch=4)
    assert one_row.rows.shape == (1, 3) and one_row.request == ("r1", ("probabilities", "class"))


# (what is wrong, the gRPC request, the JSON body of the same mistake): both must fail with the same ClientError
SAME_MISTAKES = [
    ("no input", lambda: request(inputs=0), b'{"inputs": []}'),
    ("two inputs", lambda: request(inputs=2), None),
    ("BYTES datatype", lambda: request("BYTES", shape=[2, 3]), json_body("BYTES")),
    ("a typo", lambda: request("fp32", shape=[2, 3]), json_body("fp32")),
    ("no shape", lambda: request(shape=[]), json_body(shape=[])),
    ("three dimensions", lambda: request(shape=[1, 2, 3]), json_body(shape=[1, 2, 3])),
    ("too few features", lambda: request(shape=[3, 2]), json_body(shape=[3, 2])),
    ("no rows", lambda: request(shape=[0, 3], values=np.zeros((0, 3))), json_body(shape=[0, 3], values=[])),
    ("negative rows", lambda: request(shape=[-2, 3]), json_body(shape=[-2, 3])),
    ("over the batch limit", lambda: request(shape=[5, 3]), json_body(shape=[5, 3])),
    (
        "fewer values than the shape",
        lambda: request(shape=[2, 3], values=ROWS[0]),
        json_body(shape=[2, 3], values=ROWS[0]),
    ),
    ("INT8 out of range", lambda: request("INT8", values=[[1, 300, 2]]), json_body("INT8", values=[[1, 300, 2]])),
    (
        "UINT16 too large",
        lambda: request("UINT16", values=[[1, 2, 70000]]),
        json_body("UINT16", values=[[1, 2, 70000]]),
    ),
    ("unknown output", lambda: request(outputs=("logits",)), json_body(outputs=[{"name": "logits"}])),
]


@pytest.mark.parametrize(("mistake", "make", "body"), SAME_MISTAKES, ids=[m[0] for m in SAME_MISTAKES])
def test_a_mistake_gets_the_http_error(mistake: str, make: Any, body: bytes | None) -> None:
    grpc_error = error_of(lambda: tensors.decode(make(), NAMES, max_batch=4))
    assert 400 <= grpc_error.status < 500
    assert status.status_code(grpc_error) is grpc.StatusCode.INVALID_ARGUMENT
    if body is None:
        body = json.dumps({"inputs": [json.loads(json_body())["inputs"][0]] * 2}).encode()
    http_error = error_of(lambda: parse_v2(body, NAMES, max_batch=4))
    assert (grpc_error.status, grpc_error.code, grpc_error.message) == (
        http_error.status,
        http_error.code,
        http_error.message,
    )


def test_non_finite_values_name_the_row_and_feature_and_the_field() -> None:
    values = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 6.0]])
    for message, where in (
        (request("FP64", values=values), "inputs[0].contents"),
        (request("FP64", values=[[1.0, 2.0, 3.0], [1e300, 0.0, 0.0]]), "inputs[0].contents"),  # beyond float32
        (request("FP32", shape=[2, 3], raw=values.astype("<f4").tobytes()), "raw_input_contents[0]"),
    ):
        error = error_of(lambda message=message: tensors.decode(message, NAMES, max_batch=4))
        assert error.code == "non_finite" and error.message.startswith(f"{where}[1]["), error.message


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (request("FP16", shape=[2, 3]), "FP16 has no contents field"),
        (request("FP32", values=ROWS.astype(np.float64)), "inputs[0].contents.fp32_contents"),
        (request("FP32", shape=[2, 3], raw=ROWS.astype("<f4").tobytes()[:-4]), "has 20 bytes but shape [2, 3]"),
        (request("FP64", shape=[2, 3], raw=ROWS.astype("<f4").tobytes()), "needs 48 (6 values of 8 bytes"),
        (request(raw=b"\0" * 24), "raw_input_contents has 2 entries for 1 input"),
    ],
    ids=["fp16-contents", "wrong-field", "short-raw", "raw-of-another-width", "raw-per-input"],
)
def test_grpc_only_mistakes_name_the_field(message: pb.ModelInferRequest, fragment: str) -> None:
    if fragment.startswith("inputs[0].contents.fp32"):  # FP32 declared, values sent as fp64_contents
        message.inputs[0].contents.Clear()
        message.inputs[0].contents.fp64_contents.extend(ROWS.reshape(-1).tolist())
    if fragment.startswith("raw_input_contents has 2"):
        message.raw_input_contents.append(b"\0" * 24)
    error = error_of(lambda: tensors.decode(message, NAMES, max_batch=4))
    assert error.status == 422 and fragment in error.message, error.message


def test_raw_and_contents_together_are_refused() -> None:
    message = request(raw=ROWS.astype("<f4").tobytes())
    message.inputs[0].contents.fp32_contents.extend(ROWS.reshape(-1).tolist())
    assert "in one of them" in error_of(lambda: tensors.decode(message, NAMES, max_batch=4)).message


def test_the_answer_carries_the_http_outputs_in_contents_or_raw() -> None:
    model = SimpleNamespace(name="m", version="3", card=SimpleNamespace(classes=["no", "yes"]))
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    typed = tensors.encode(model, probs, tensors.decode(request(), NAMES, 4))  # type: ignore[arg-type]
    raw_request = request(shape=[2, 3], raw=ROWS.astype("<f4").tobytes(), outputs=("class", "probabilities"))
    raw = tensors.encode(model, probs, tensors.decode(raw_request, NAMES, 4))  # type: ignore[arg-type]
    assert (typed.model_name, typed.model_version, typed.id) == ("m", "3", "r1")
    assert [o.name for o in typed.outputs] == ["probabilities", "class"] and not typed.raw_output_contents
    assert [o.name for o in raw.outputs] == ["class", "probabilities"] and len(raw.raw_output_contents) == 2
    for answer, raws in ((typed, [None, None]), (raw, list(raw.raw_output_contents))):
        got = {o.name: tensors.as_numpy(o, r) for o, r in zip(answer.outputs, raws, strict=True)}
        np.testing.assert_array_equal(got["probabilities"], probs)
        assert got["class"].tolist() == ["no", "yes"]


@pytest.mark.parametrize(
    ("http", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (415, grpc.StatusCode.INVALID_ARGUMENT),
        (422, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (404, grpc.StatusCode.NOT_FOUND),
        (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (503, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_http_statuses_map_to_grpc_codes_never_internal(http: int, code: grpc.StatusCode) -> None:
    assert status.status_code(ClientError(http, "x", "what")) is code


def test_retry_after_and_the_error_code_travel_as_trailing_metadata() -> None:
    error = ClientError(503, "overloaded", "busy", headers=[(b"retry-after", b"2"), (b"content-type", b"x")])
    assert status.trailing_metadata(error) == (("error-code", "overloaded"), ("retry-after", "2"))


def test_metadata_and_peers_read_like_http_headers_and_addresses() -> None:
    assert status.headers([("X-API-Key", "k"), ("authorization", "Bearer t"), ("x-bin", b"\x00")]) == [
        (b"x-api-key", b"k"),
        (b"authorization", b"Bearer t"),
        (b"x-bin", b"\x00"),
    ]
    assert status.headers(None) == []
    assert status.peer_address("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert status.peer_address("ipv6:[::1]:5000") == "::1"
    assert status.peer_address("unix:/tmp/s") == "unix:/tmp/s"

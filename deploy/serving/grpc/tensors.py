"""ModelInferRequest tensors to float32 rows, and probabilities back to ModelInferResponse tensors.

The checks and their messages are the JSON V2 body's (deploy/serving/payload.py): datatype, shape, value count,
integer ranges, finite values, outputs. What only gRPC has (typed ``contents`` fields, little-endian
``raw_input_contents``) is checked here. Raw inputs get raw outputs, as KServe and Triton answer.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from deploy.serving.grpc.v2.grpc_predict_v2_pb2 import (
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
)
from deploy.serving.model import LoadedModel
from deploy.serving.payload import (
    ClientError,
    V2Request,
    check_finite,
    check_v2_count,
    check_v2_datatype,
    check_v2_input_count,
    integer_out_of_range,
    v2_output_names,
    v2_shape,
)

#: the contents field each datatype's values travel in (the protocol has none for FP16: raw only)
CONTENTS_FIELD = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
}
_FIELD_DTYPE = {
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
}
#: the little-endian layout of each datatype in raw_input_contents
RAW_DTYPE = {name: np.dtype(name.lower().replace("fp", "float")).newbyteorder("<") for name in CONTENTS_FIELD}
RAW_DTYPE["FP16"] = np.dtype("<f2")
_NARROWER = frozenset({"INT8", "INT16", "UINT8", "UINT16"})  # carried in a wider contents field: range-checked


class Decoded(NamedTuple):
    """A ModelInfer request's rows, what its answer needs (id, outputs), and whether it sent raw contents."""

    rows: np.ndarray
    request: V2Request
    raw: bool


def decode(message: ModelInferRequest, names: list[str], max_batch: int) -> Decoded:
    """The float32 [rows, features] matrix of a ModelInfer request, or the ClientError the JSON body would get."""
    check_v2_input_count(len(message.inputs))
    tensor = message.inputs[0]
    check_v2_datatype(tensor.datatype)
    shape = list(tensor.shape)
    rows, cols = v2_shape(shape, len(names), max_batch)
    raw = len(message.raw_input_contents) > 0
    if raw:
        values, where = _raw_values(message, tensor, shape, rows * cols), "raw_input_contents[0]"
    else:
        values, where = _content_values(tensor, shape, rows * cols), "inputs[0].contents"
    request = V2Request(message.id or None, v2_output_names([output.name for output in message.outputs]))
    with np.errstate(over="ignore", invalid="ignore"):  # FP64 beyond float32's range: Inf, named just below
        matrix = values.reshape(rows, cols).astype(np.float32)  # a copy: raw bytes are read-only, torch writes
    check_finite(matrix, names, where)
    return Decoded(matrix, request, raw)


def _content_values(tensor: ModelInferRequest.InferInputTensor, shape: list[int], needed: int) -> np.ndarray:
    """The values of ``inputs[0].contents``: in the one field its datatype names, as many as the shape says."""
    datatype = tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ClientError(
            422,
            "bad_datatype",
            f"datatype {datatype} has no contents field in the protocol; send its values little-endian in "
            "raw_input_contents, or say FP32",
        )
    filled = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
    if any(name != field for name in filled):
        raise ClientError(
            422,
            "bad_datatype",
            f"datatype {datatype} carries its values in inputs[0].contents.{field}; the request filled {filled}",
        )
    values = np.array(getattr(tensor.contents, field), dtype=_FIELD_DTYPE[field])
    check_v2_count(len(values), shape, needed)
    if datatype in _NARROWER:
        info = np.iinfo(datatype.lower())
        outside = np.flatnonzero((values < info.min) | (values > info.max))
        if len(outside):
            raise integer_out_of_range(int(outside[0]), int(values[outside[0]]), datatype)
    return values


def _raw_values(
    message: ModelInferRequest, tensor: ModelInferRequest.InferInputTensor, shape: list[int], needed: int
) -> np.ndarray:
    """The values of ``raw_input_contents[0]``: one entry per input, no contents beside it, the shape's bytes."""
    if len(message.raw_input_contents) != len(message.inputs):
        raise ClientError(
            422,
            "bad_inputs",
            f"raw_input_contents has {len(message.raw_input_contents)} entries for {len(message.inputs)} input; "
            "send one entry per input",
        )
    if tensor.HasField("contents"):
        raise ClientError(
            422,
            "bad_inputs",
            "inputs[0] has contents and raw_input_contents[0] too; send its values in one of them",
        )
    dtype = RAW_DTYPE[tensor.datatype]
    raw = message.raw_input_contents[0]
    if len(raw) != needed * dtype.itemsize:
        raise ClientError(
            422,
            "bad_shape",
            f"raw_input_contents[0] has {len(raw)} bytes but shape {shape} of {tensor.datatype} needs "
            f"{needed * dtype.itemsize} ({needed} values of {dtype.itemsize} bytes, little-endian)",
        )
    return np.frombuffer(raw, dtype=dtype)


def encode(model: LoadedModel, probs: np.ndarray, decoded: Decoded) -> ModelInferResponse:
    """The answer infer_v2 gives over HTTP (the outputs asked for, probabilities FP32 [rows, classes] and class
    labels BYTES [rows]), in typed contents, or in raw_output_contents when the request sent raw inputs."""
    request = decoded.request
    response = ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id or "")
    classes = model.card.classes
    for name in request.outputs:
        output = response.outputs.add(name=name)
        if name == "probabilities":
            output.datatype, output.shape[:] = "FP32", probs.shape
            if decoded.raw:
                response.raw_output_contents.append(probs.astype("<f4").tobytes())
            else:
                output.contents.fp32_contents.extend(probs.reshape(-1).tolist())
        else:
            labels = [classes[k].encode() for k in probs.argmax(axis=1).tolist()]
            output.datatype, output.shape[:] = "BYTES", [len(labels)]
            if decoded.raw:
                response.raw_output_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in labels))
            else:
                output.contents.bytes_contents.extend(labels)
    return response


def as_numpy(tensor: ModelInferResponse.InferOutputTensor, raw: bytes | None = None) -> np.ndarray:
    """An output tensor's values (a client's view, for tests and the benchmark): FP32 as float32, BYTES as str."""
    if tensor.datatype == "BYTES":
        items = list(tensor.contents.bytes_contents) if raw is None else _length_prefixed(raw)
        return np.array([item.decode() for item in items]).reshape(tuple(tensor.shape))
    values = np.frombuffer(raw, dtype="<f4") if raw is not None else np.array(tensor.contents.fp32_contents)
    return values.astype(np.float32).reshape(tuple(tensor.shape))


def _length_prefixed(raw: bytes) -> list[bytes]:
    """BYTES elements in raw contents: each a 4-byte little-endian length, then that many bytes."""
    items, at = [], 0
    while at < len(raw):
        (size,) = struct.unpack_from("<I", raw, at)
        items.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return items


def contents(datatype: str, values: np.ndarray) -> InferTensorContents:
    """Typed contents for ``values`` of ``datatype`` (a client's side, for tests and the benchmark)."""
    field = CONTENTS_FIELD[datatype]
    return InferTensorContents(**{field: values.reshape(-1).tolist()})

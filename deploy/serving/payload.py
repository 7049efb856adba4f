"""Request bodies to float32 matrices, and the error that names what a client got wrong.

The fast path is one ``orjson.loads`` and one ``np.array``; only a body that fails it is walked value by
value,
so that the error message can say which instance and which feature was wrong.
"""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

V2_DATATYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
_NON_FINITE_TOKENS_LOWER = ("nan", "infinity", "inf")
_BOOL_TOKENS = (b"true", b"false")
_NUMBERS_AND_KEY = b'0123456789.eE+-[]{},: \t\r\n"instances'
_BODY_KEYS = ("instances", "parameters")
V2_OUTPUTS = ("probabilities", "class")  # what POST /v2/models/NAME/infer answers, in this order by default
MAX_DEPTH = 128  # JSON nesting a body may have (the API's own shapes nest 4)
_KEY_END = re.compile(rb'"[ \t\r\n]*:')  # the end of every key, and of any string that holds a quote and a colon
_MAX_NAMED = 5
FLOAT32_MAX = float(np.finfo(np.float32).max)


class ClientError(Exception):
    """A client's mistake: answered with ``status`` and a JSON body ``{"error": message, "code": code}``."""

    def __init__(self, status: int, code: str, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers)

    def body(self) -> bytes:
        return orjson.dumps({"error": self.message, "code": self.code, "status": self.status})


def loads_json(body: bytes) -> Any:
    """Parse JSON; NaN/Infinity literals and syntax errors become a 400 that says what to fix."""
    if not body:
        raise ClientError(400, "empty_body", "request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _decode_error(body, exc) from exc


class _DuplicateKey(ValueError):
    """Raised by the pairs hook of ``check_unique_keys`` with the key found twice."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)


def _kept_keys(doc: Any, bulk: object) -> int:
    """How many keys the parsed document holds (a key named twice in one object was kept once), not counting
    inside ``bulk`` (the rows, already checked to hold nothing but numbers or flat objects of numbers); a
    ClientError when it nests deeper than MAX_DEPTH (orjson allows 1024 levels, Python's own parser fewer)."""
    count, stack = 0, [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if value is bulk:
            continue
        if depth > MAX_DEPTH:
            raise ClientError(
                400,
                "nested_too_deep",
                f"the JSON nests more than {MAX_DEPTH} levels deep; the request shapes of this API nest 4, "
                "see /openapi.json",
            )
        if type(value) is dict:
            count += len(value)
            value = value.values()
        stack.extend((item, depth + 1) for item in value if type(item) is dict or type(item) is list)
    return count


def _key_ends(body: bytes) -> int:
    """Quotes followed by a colon: every key's end, plus any string that holds such a pair."""
    ends = body.count(b'":')
    if ends != body.count(b":"):  # a colon after a space (a key written `"k" : v`) or inside a string
        return len(_KEY_END.findall(body))
    return ends


def check_unique_keys(body: bytes, doc: Any, bulk: object, bulk_keys: int, features: Collection[str] = ()) -> None:
    """Refuse an object that names a key twice: parsers keep the last value, so which value the client meant
    is a guess (orjson cannot tell). Only a string's contents can add to the count of key ends, so when it
    matches the keys ``doc`` kept (``bulk_keys`` of them in the validated rows ``bulk``), no key was named
    twice; otherwise the body is parsed again to find the key. Called once the rows are valid."""
    if _key_ends(body) == _kept_keys(doc, bulk) + bulk_keys:
        return
    try:
        json.loads(body, object_pairs_hook=_unique_pairs)  # MAX_DEPTH keeps it within the recursion limit
    except _DuplicateKey as exc:
        key = str(exc.args[0])
        hint = " (each feature once per instance)" if key in features else ""
        raise ClientError(
            422,
            "duplicate_key",
            f"the key {_brief(key, 40)} appears twice in one JSON object; name each key once{hint}",
        ) from None


def _decode_error(body: bytes, exc: orjson.JSONDecodeError) -> ClientError:
    """What the parser stopped at: a NaN or Infinity literal, a number beyond the float range, or a syntax error
    (a body that merely contains the text "NaN" somewhere is judged by where the parser stopped)."""
    rest = exc.doc[exc.pos :]  # pos counts characters of the decoded text, not bytes of the body
    if "is infinity when parsed" in str(exc):
        token = rest.split(",", 1)[0].split("]", 1)[0].split("}", 1)[0].strip()
        shown = token if len(token) <= 24 else f"{token[:24]}…"
        return ClientError(
            422,
            "non_finite",
            f"the number {shown} at character {exc.pos} is beyond the float range; send finite numbers within "
            f"float32's ±{FLOAT32_MAX:.3g}",
        )
    if rest[:9].lower().startswith(_NON_FINITE_TOKENS_LOWER):
        return ClientError(400, "non_finite", "NaN and Infinity are not allowed; send finite numbers")
    return ClientError(400, "malformed_json", f"malformed JSON: {exc}")


class _BoundedRepr(reprlib.Repr):
    """reprlib with shallow nesting and short strings (Python 3.11's Repr takes no keyword arguments)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 60, 60


_REPR = _BoundedRepr()


def _brief(value: object, limit: int) -> str:
    """A client's value for a message: its repr, bounded in depth and length (str() of a list nested a
    thousand deep raises RecursionError, which would be a 500)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    kinds = {bool: "boolean", str: "string", list: "array", dict: "object", int: "number", float: "number"}
    return kinds.get(type(value), type(value).__name__)


def _json_value(value: object) -> str:
    """How the client wrote a value: `the string "abc"`, `null`, `true` (JSON's spelling, not Python's)."""
    if value is None or type(value) is bool:
        return f"JSON {orjson.dumps(value).decode()}"
    if type(value) is str:
        return f"the string {orjson.dumps(value[:40]).decode()}"
    return f"a JSON {_json_type(value)}"


def _diagnose_rows(rows: list[Any], names: list[str], where: str) -> None:
    """Walk the rows and raise a ClientError naming the first bad instance or value."""
    n = len(names)
    for i, row in enumerate(rows):
        if type(row) is not list:
            raise ClientError(
                422,
                "bad_instance",
                f"{where}[{i}] is a JSON {_json_type(row)}; expected an array of "
                f"{n} numbers or an object keyed by feature name",
            )
        if len(row) != n:
            raise ClientError(
                422,
                "wrong_feature_count",
                f"{where}[{i}] has {len(row)} values; the model takes {n} "
                "features (see feature_names at GET /v1/models/{name})",
            )
        for j, value in enumerate(row):
            if type(value) is bool or not isinstance(value, int | float):
                raise ClientError(
                    422,
                    "non_numeric",
                    f"{where}[{i}][{j}] (feature '{names[j]}') is {_json_value(value)}; expected a number",
                )


def check_finite(matrix: np.ndarray, names: list[str], where: str) -> None:
    """A 422 naming the first NaN or Inf of ``matrix`` (row, feature), where ``where`` says which field held it."""
    if np.isfinite(matrix).all():
        return
    i, j = (int(k) for k in np.argwhere(~np.isfinite(matrix))[0])
    raise ClientError(
        422,
        "non_finite",
        f"{where}[{i}][{j}] (feature '{names[j]}') is NaN, Inf or outside the float32 range; send finite numbers",
    )


def only_numbers(body: bytes, quotes: int) -> bool:
    """True when the body's only strings are its ``quotes`` key quotes and it has no true/false/null.

    One pass: the bytes of numbers, JSON punctuation and the letters of "instances" are deleted; anything
    left (the r, u, f or l of true/false/null, another key's letters) means the body needs the full walk.
    """
    return body.count(b'"') == quotes and not body.translate(None, _NUMBERS_AND_KEY)


def to_matrix(
    rows: list[Any], names: list[str], body: bytes, where: str = "instances", plain: bool = False
) -> np.ndarray:
    """A C-contiguous float32 [N, F] matrix from nested lists, or a ClientError naming the first bad value.

    ``plain`` (the body holds nothing but numbers) allows one direct float32 conversion.
    """
    if plain:
        return _plain_matrix(rows, names, where)
    if any(token in body for token in _BOOL_TOKENS):
        _diagnose_rows(rows, names, where)
    try:
        array = np.array(rows)
    except (ValueError, TypeError, OverflowError):
        _diagnose_rows(rows, names, where)
        array = np.array(rows, dtype=np.float64)
    if array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[1] != len(names):
        _diagnose_rows(rows, names, where)
        array = np.array(rows, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        matrix = np.ascontiguousarray(array, dtype=np.float32)
    check_finite(matrix, names, where)
    return matrix


def _plain_matrix(rows: list[Any], names: list[str], where: str) -> np.ndarray:
    """Numbers only: float64 (JSON numbers are finite there), a range check, then float32."""
    try:
        array = np.array(rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as exc:
        _diagnose_rows(rows, names, where)
        raise ClientError(422, "bad_instance", f"{where} is not a matrix of numbers: {exc}") from exc
    if array.ndim != 2 or array.shape[1] != len(names):
        _diagnose_rows(rows, names, where)
    if array.size <= 512:  # a few rows: Python's max and min over the lists cost a third of numpy's abs().max()
        beyond = max(map(max, rows)) > FLOAT32_MAX or min(map(min, rows)) < -FLOAT32_MAX
    else:
        beyond = np.abs(array).max() > FLOAT32_MAX
    if beyond:
        with np.errstate(over="ignore", invalid="ignore"):
            check_finite(array.astype(np.float32), names, where)
    return array.astype(np.float32)


def _dict_rows(instances: list[Any], names: list[str]) -> list[list[Any]]:
    """Order feature-keyed objects by the card's feature names; name missing or unknown features."""
    index = set(names)
    for i, item in enumerate(instances):
        if type(item) is not dict:
            raise ClientError(
                422,
                "bad_instance",
                f"instances[{i}] is a JSON {_json_type(item)} but instances[0] is "
                "an object; use one form for the whole batch",
            )
        if len(item) != len(names) or not index.issuperset(item):
            raise ClientError(
                422,
                "wrong_features",
                f"instances[{i}]: {_feature_mismatch(item, names, index)}; expected exactly the {len(names)} "
                "names at GET /v1/models/{name}",
            )
    return [[item[n] for n in names] for item in instances]


def _feature_mismatch(item: dict[str, Any], names: list[str], index: set[str]) -> str:
    """`N missing features (the first few named), M unknown ones`, each part only when there are any."""
    parts = []
    for label, found in (
        ("missing", [n for n in names if n not in item]),
        ("unknown", [k for k in item if k not in index]),
    ):
        if found:
            more = f" and {len(found) - _MAX_NAMED} more" if len(found) > _MAX_NAMED else ""
            parts.append(f"{len(found)} {label} feature{'s' if len(found) > 1 else ''} {found[:_MAX_NAMED]}{more}")
    return ", ".join(parts)


def _check_keys(doc: dict[str, Any]) -> None:
    """A body with more than the one key: only 'instances' and an object 'parameters' are allowed."""
    if any(k not in _BODY_KEYS for k in doc) or "instances" not in doc:
        raise ClientError(
            422,
            "bad_body",
            f"body needs the key 'instances' (got keys {sorted(doc)[:_MAX_NAMED]}); "
            'send {"instances": [[...], ...]}',
        )
    if type(doc.get("parameters", {})) is not dict:
        raise ClientError(422, "bad_body", "'parameters' must be an object")


def _instances(doc: Any, max_batch: int) -> list[Any]:
    if type(doc) is not dict:
        raise ClientError(
            400,
            "bad_body",
            f'body is a JSON {_json_type(doc)}; expected an object {{"instances": [[...], ...]}}',
        )
    if len(doc) != 1 or "instances" not in doc:
        _check_keys(doc)
    instances = doc["instances"]
    if type(instances) is not list:
        raise ClientError(422, "bad_body", f"'instances' is a JSON {_json_type(instances)}; expected an array")
    if not instances:
        raise ClientError(422, "empty_instances", "'instances' is empty; send at least one instance")
    if len(instances) > max_batch:
        raise ClientError(
            422,
            "batch_too_large",
            f"{len(instances)} instances exceed the limit of {max_batch} per request; split the batch",
        )
    return instances


def parse_v1(body: bytes, names: list[str], max_batch: int) -> np.ndarray:
    """KServe V1 / TF Serving body: rows as arrays or as objects keyed by feature name."""
    doc = loads_json(body)
    instances = _instances(doc, max_batch)
    if type(instances[0]) is dict:
        matrix = to_matrix(_dict_rows(instances, names), names, body)
        check_unique_keys(body, doc, instances, len(names) * len(instances), names)
        return matrix
    plain = only_numbers(body, quotes=2)  # one key, so nothing can be named twice
    matrix = to_matrix(instances, names, body, plain=plain)
    if not plain:
        check_unique_keys(body, doc, instances, 0)
    return matrix


def _v2_tensor(doc: Any) -> dict[str, Any]:
    if type(doc) is not dict or type(doc.get("inputs")) is not list:
        raise ClientError(
            422,
            "bad_body",
            'body needs "inputs": [{"name", "shape", "datatype", "data"}] (Open Inference Protocol)',
        )
    inputs = doc["inputs"]
    check_v2_input_count(len(inputs))
    if type(inputs[0]) is not dict:
        raise ClientError(
            422,
            "bad_inputs",
            f"inputs[0] is {_json_value(inputs[0])}; expected a tensor object {{name, shape, datatype, data}}",
        )
    tensor: dict[str, Any] = inputs[0]
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise ClientError(422, "bad_inputs", f"input tensor is missing {missing}")
    check_v2_datatype(tensor["datatype"])
    return tensor


# -- the Open Inference Protocol's tensor checks, shared by the JSON body and gRPC (deploy/serving/grpc) --------
def check_v2_input_count(count: int) -> None:
    """The model takes one input tensor."""
    if count != 1:
        raise ClientError(422, "bad_inputs", f"expected exactly one input tensor, got {count}")


def check_v2_datatype(datatype: object) -> None:
    """A numeric Open Inference Protocol datatype (BYTES, BOOL or a typo is the client's mistake)."""
    if type(datatype) is not str or datatype not in V2_DATATYPES:
        raise ClientError(422, "bad_datatype", f"datatype {_brief(datatype, 24)} is not numeric; use FP32")


def v2_shape(shape: Any, n_features: int, max_batch: int) -> tuple[int, int]:
    """(rows, features) of a tensor shaped [rows, features] or [features], within the model and the batch limit."""
    if type(shape) is not list or not all(type(d) is int for d in shape) or len(shape) not in (1, 2):
        raise ClientError(422, "bad_shape", f"shape must be [rows, {n_features}] (integers), got {_brief(shape, 60)}")
    rows, cols = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])
    if cols != n_features:
        raise ClientError(
            422, "wrong_feature_count", f"shape {shape} has {cols} features; the model takes {n_features}"
        )
    if rows < 1:
        raise ClientError(422, "empty_instances", f"shape {shape} has no rows; send at least one")
    if rows > max_batch:
        raise ClientError(422, "batch_too_large", f"{rows} rows exceed the limit of {max_batch} per request")
    return rows, cols


def check_v2_count(count: int, shape: list[int], needed: int) -> None:
    """The tensor holds as many values as its shape says."""
    if count != needed:
        raise ClientError(422, "bad_shape", f"data has {count} values but shape {shape} needs {needed}")


def integer_out_of_range(index: int, value: object, datatype: str) -> ClientError:
    """The 422 for a value an integer datatype cannot hold (a client that says INT8 and sends 2.5 or 300)."""
    info = np.iinfo(datatype.lower())
    return ClientError(
        422,
        "bad_datatype",
        f"data[{index}] is {_brief(value, 30)}, which datatype {datatype} cannot hold (integers from {info.min} to "
        f"{info.max}); send such integers, or say FP32",
    )


def _v2_rows(data: list[Any], rows: int, cols: int) -> list[Any]:
    """Nested data, flattened: one array of ``cols`` values per row, as the shape says (never a ragged mix)."""
    if len(data) != rows or any(type(row) is not list or len(row) != cols for row in data):
        raise ClientError(
            422,
            "bad_shape",
            f"nested data must be {rows} arrays of {cols} values each, as the shape says; or send one flat array "
            "in row-major order",
        )
    return [v for row in data for v in row]


def _v2_integers(flat: list[Any], datatype: str) -> None:
    """An integer datatype's data must be integers in its range: a client that says INT8 and sends 2.5 has a bug."""
    info = np.iinfo(datatype.lower())
    for i, value in enumerate(flat):
        whole = type(value) is int or (type(value) is float and value.is_integer())  # 3.0: a client's float
        if not whole or not info.min <= value <= info.max:
            raise integer_out_of_range(i, value, datatype)


class V2Request(NamedTuple):
    """What an Open Inference Protocol request asks of the answer besides the rows."""

    id: str | None
    outputs: tuple[str, ...]


def _v2_outputs(doc: dict[str, Any]) -> tuple[str, ...]:
    """The outputs the request names (in its order), or all of them; an unknown name is the client's mistake."""
    asked = doc.get("outputs")
    if asked is None or asked == []:
        return V2_OUTPUTS
    if type(asked) is not list or not all(type(o) is dict and type(o.get("name")) is str for o in asked):
        raise ClientError(
            422,
            "bad_outputs",
            f'outputs must be an array of {{"name": ...}} objects, naming some of {list(V2_OUTPUTS)}',
        )
    return v2_output_names([o["name"] for o in asked])


def v2_output_names(asked: list[str]) -> tuple[str, ...]:
    """The outputs a request names, each once in its order (none: all of them); an unknown one is a 422."""
    if not asked:
        return V2_OUTPUTS
    names = tuple(dict.fromkeys(asked))
    unknown = [n for n in names if n not in V2_OUTPUTS]
    if unknown:
        raise ClientError(
            422,
            "unknown_output",
            f"the model has no output {_brief(unknown[0], 40)}; its outputs are {list(V2_OUTPUTS)} "
            "(GET /v2/models/NAME), or leave out 'outputs' for all of them",
        )
    return names


def parse_v2(body: bytes, names: list[str], max_batch: int) -> tuple[np.ndarray, V2Request]:
    """Open Inference Protocol body -> (matrix, the request's id and the outputs it asks for)."""
    doc = loads_json(body)
    tensor = _v2_tensor(doc)
    rows, cols = v2_shape(tensor["shape"], len(names), max_batch)
    data = tensor["data"]
    if type(data) is not list:
        raise ClientError(422, "bad_data", f"data is a JSON {_json_type(data)}; expected an array")
    flat = data if not data or type(data[0]) is not list else _v2_rows(data, rows, cols)
    check_v2_count(len(flat), tensor["shape"], rows * cols)
    if tensor["datatype"].startswith(("INT", "UINT")):
        _v2_integers(flat, tensor["datatype"])
    grid = [flat[i * cols : (i + 1) * cols] for i in range(rows)]
    request = V2Request(doc["id"] if type(doc.get("id")) is str else None, _v2_outputs(doc))
    matrix = to_matrix(grid, names, body, where="inputs[0].data")
    check_unique_keys(body, doc, data, 0)
    return matrix, request

"""Request parsing: every client mistake becomes a ClientError naming it; good bodies become matrices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploy.serving.payload import ClientError, parse_v1, parse_v2

NAMES = ["a", "b", "c"]


def v1(doc: object) -> np.ndarray:
    return parse_v1(json.dumps(doc).encode(), NAMES, max_batch=4)


def test_rows_and_objects_give_the_same_matrix() -> None:
    rows = v1({"instances": [[1, 2.5, 3], [4, 5, 6]]})
    keyed = v1({"instances": [{"c": 3, "a": 1, "b": 2.5}, {"b": 5, "a": 4, "c": 6}]})
    assert rows.dtype == np.float32 and rows.shape == (2, 3) and rows.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(rows, keyed)


def test_numbers_in_every_json_spelling_and_parameters_parse_alike() -> None:
    """Exponents, signs, whitespace and a 'parameters' object: the same matrix as the plain spelling."""
    plain = v1({"instances": [[100, -0.5, 3]]})
    spelled = parse_v1(b'{ "instances" :\n\t[ [ 1E2 , -5e-1,3.0 ] ] }', NAMES, max_batch=4)
    with_parameters = v1({"instances": [[100, -0.5, 3]], "parameters": {"threshold": 0.5}})
    np.testing.assert_array_equal(plain, spelled)
    np.testing.assert_array_equal(plain, with_parameters)


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        (b"{not json", 400, "malformed_json", "malformed JSON"),
        (b'{"instances": [[NaN, 1, 2]]}', 400, "non_finite", "NaN"),
        (b'{"instances": [[1, -Infinity, 2]]}', 400, "non_finite", "Infinity"),
        (b'{"instances": [[1, 2, 1e309]]}', 422, "non_finite", "number 1e309 at character 22 is beyond"),
        (b'{"instances": [[1, 2, ' + b"9" * 400 + b"]]}", 422, "non_finite", "9" * 24 + "… at character 22"),
        (b'{"id": "NaN", "instances": [[1, 2, 3]],}', 400, "malformed_json", "trailing comma"),
        ('{"id": "café", "instances": [[NaN, 1, 2]]}'.encode(), 400, "non_finite", "NaN"),  # pos counts characters
        ('{"é": 1, "instances": [[1e309, 1, 2]]}'.encode(), 422, "non_finite", "number 1e309 at character 24"),
        (b"", 400, "empty_body", "empty"),
        (b"[1, 2]", 400, "bad_body", "array"),
        (b'{"inputs": [[1, 2, 3]]}', 422, "bad_body", "instances"),
        (b'{"instances": {"a": 1}}', 422, "bad_body", "object"),
        (b'{"instances": []}', 422, "empty_instances", "empty"),
        (
            b'{"instances": [[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]]}',
            422,
            "batch_too_large",
            "limit of 4",
        ),
        (b'{"instances": [[1, 2]]}', 422, "wrong_feature_count", "has 2 values"),
        (b'{"instances": [[1, 2, 3], [1, 2]]}', 422, "wrong_feature_count", "instances[1]"),
        (b'{"instances": [[1, "x", 3]]}', 422, "non_numeric", "feature 'b'"),
        (b'{"instances": [[1, "2", 3]]}', 422, "non_numeric", 'is the string "2"; expected a number'),
        (b'{"instances": [[1, true, 3]]}', 422, "non_numeric", "is JSON true;"),
        (b'{"instances": [[1, null, 3]]}', 422, "non_numeric", "is JSON null;"),
        (b'{"instances": [[1, 1e39, 3]]}', 422, "non_finite", "float32"),
        (b'{"instances": [[1, 2, -1E39]]}', 422, "non_finite", "feature 'c'"),
        (b'{"instances": [[1, 2, 3]], "extra": 1}', 422, "bad_body", "['extra', 'instances']"),
        (b'{"parameters": {}}', 422, "bad_body", "needs the key 'instances'"),
        (b'{"instances": [[1, [2], 3]]}', 422, "non_numeric", "array"),
        (b'{"instances": [5]}', 422, "bad_instance", "instances[0]"),
        (b'{"instances": [[1, 2, 3]], "parameters": [1]}', 422, "bad_body", "parameters"),
        (
            b'{"instances": [{"a": 1, "b": 2}]}',
            422,
            "wrong_features",
            "instances[0]: 1 missing feature ['c']; expected",
        ),
        (
            b'{"instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]}',
            422,
            "wrong_features",
            "instances[0]: 1 unknown feature ['d']; expected",
        ),
        (b'{"instances": [{"a": 1, "b": 2, "c": 3}, [1, 2, 3]]}', 422, "bad_instance", "one form"),
        (b'{"instances": [{"a": 1, "b": "no", "c": 3}]}', 422, "non_numeric", "feature 'b'"),
    ],
)
def test_bad_v1_bodies_are_named(body: bytes, status: int, code: str, fragment: str) -> None:
    with pytest.raises(ClientError) as info:
        parse_v1(body, NAMES, max_batch=4)
    assert (info.value.status, info.value.code) == (status, code)
    assert fragment in info.value.message
    assert json.loads(info.value.body())["code"] == code


def test_v2_flat_and_nested_data() -> None:
    doc = {
        "id": "r1",
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}],
    }
    flat, request = parse_v2(json.dumps(doc).encode(), NAMES, 4)
    doc["inputs"][0]["data"] = [[1, 2, 3], [4, 5, 6]]
    nested, _ = parse_v2(json.dumps(doc).encode(), NAMES, 4)
    assert request.id == "r1" and request.outputs == ("probabilities", "class")
    np.testing.assert_array_equal(flat, nested)
    assert flat.shape == (2, 3)
    doc["inputs"][0].update(datatype="INT64", data=[1, 2, 3, -4, 5, 6.0])  # integers in range (6.0 too): fine
    assert parse_v2(json.dumps(doc).encode(), NAMES, 4)[0][1, 0] == -4
    with pytest.raises(ClientError, match=r"inputs\[0\] is a JSON number; expected a tensor object"):
        parse_v2(b'{"inputs": [1]}', NAMES, 4)


@pytest.mark.parametrize(
    ("tensor", "code"),
    [
        ({"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}, "wrong_feature_count"),
        ({"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"]}, "bad_datatype"),
        ({"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}, "bad_shape"),
        ({"name": "x", "shape": [0, 3], "datatype": "FP32", "data": []}, "empty_instances"),
        ({"name": "x", "shape": [9, 3], "datatype": "FP32", "data": [1] * 27}, "batch_too_large"),
        ({"name": "x", "shape": "1x3", "datatype": "FP32", "data": [1, 2, 3]}, "bad_shape"),
        ({"name": "x", "shape": [1, 3], "datatype": {}, "data": [1, 2, 3]}, "bad_datatype"),
        ({"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, "b", 3]}, "non_numeric"),
        ({"shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}, "bad_inputs"),
        ({"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2], [3, 4, 5, 6]]}, "bad_shape"),  # ragged
        ({"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], 4, 5, 6]}, "bad_shape"),  # mixed
        ({"name": "x", "shape": [1, 3], "datatype": "UINT8", "data": [1, -5, 3]}, "bad_datatype"),
        ({"name": "x", "shape": [1, 3], "datatype": "INT8", "data": [1, 2.5, 3]}, "bad_datatype"),
        ({"name": "x", "shape": [1, 3], "datatype": "INT8", "data": [1, 200, 3]}, "bad_datatype"),
        ({"name": "x", "shape": [1, 3], "datatype": "INT32", "data": [1, True, 3]}, "bad_datatype"),
    ],
)
def test_bad_v2_bodies_are_named(tensor: dict[str, object], code: str) -> None:
    with pytest.raises(ClientError) as info:
        parse_v2(json.dumps({"inputs": [tensor]}).encode(), NAMES, 4)
    assert info.value.code == code
    assert 400 <= info.value.status < 500


def test_v2_outputs_asked_for_are_kept_in_order_and_unknown_ones_refused() -> None:
    tensor = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
    ask = [{"name": "class"}, {"name": "probabilities"}, {"name": "class"}]
    _, request = parse_v2(json.dumps({"inputs": [tensor], "outputs": ask}).encode(), NAMES, 4)
    assert request.outputs == ("class", "probabilities")
    _, request = parse_v2(json.dumps({"inputs": [tensor], "outputs": []}).encode(), NAMES, 4)
    assert request.outputs == ("probabilities", "class") and request.id is None
    for outputs, code in (([{"name": "logits"}], "unknown_output"), ([{"nam": "class"}], "bad_outputs")):
        with pytest.raises(ClientError) as info:
            parse_v2(json.dumps({"inputs": [tensor], "outputs": outputs}).encode(), NAMES, 4)
        assert info.value.code == code and info.value.status == 422
        assert "'probabilities', 'class'" in info.value.message


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [{"a": 1, "b": 2, "c": 3, "a": 4}]}',  # a feature named twice: which value?
        b'{"instances": [[9, 9, 9]], "instances": [[1, 2, 3]]}',  # two batches: which one?
        b'{"instances": [[1, 2, 3]], "parameters": {"k": 1, "k": 2}}',
        b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3], "data": [4, 5, 6]}]}',
        b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [9, 9, 9], "\\u0064ata": [1, 2, 3]}]}',
        b'{"id": "a", "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}], "id" : "b"}',
        b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}], '
        b'"parameters": {"content_type": "a", "content_type": "b"}}',
    ],
)
def test_a_key_named_twice_is_refused(body: bytes) -> None:
    parse = parse_v2 if b'"inputs"' in body else parse_v1
    with pytest.raises(ClientError) as info:
        parse(body, NAMES, 4)
    assert info.value.code == "duplicate_key" and info.value.status == 422
    assert "appears twice" in info.value.message


def test_the_same_text_in_values_is_not_a_duplicate_key() -> None:
    body = b'{"id": "data", "inputs": [{"name": "data", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}'
    assert parse_v2(body, NAMES, 4)[1].id == "data"
    assert parse_v1(b'{"instances": [{"a": 1, "b": 2, "c": 3}], "parameters": {"a": 1}}', NAMES, 4).shape == (1, 3)
    quoted = b'{"instances": [{"a": 1, "b": 2, "c": 3}], "parameters": {"note": "say \\"a\\": twice", "x": 1}}'
    assert parse_v1(quoted, NAMES, 4).shape == (1, 3)  # a string holding a quote and a colon is not a key


def test_deep_nesting_is_a_client_error_never_a_500() -> None:
    def nested(levels: int) -> bytes:
        return b"[" * levels + b"1" + b"]" * levels

    assert parse_v1(b'{"instances": [[1, 2, 3]], "parameters": {"k": ' + nested(100) + b"}}", NAMES, 4).shape == (1, 3)
    for tail in (b"}}", b', "s": "\\":"}}'):  # with or without a string that sends the body to a second parse
        deep = b'{"instances": [[1, 2, 3]], "parameters": {"k": ' + nested(1010) + tail  # orjson takes 1024
        with pytest.raises(ClientError) as info:
            parse_v1(deep, NAMES, 4)
        assert (info.value.status, info.value.code) == (400, "nested_too_deep")
    for field in ("shape", "datatype"):  # named in the message: bounded, not str() of a list a thousand deep
        tensor = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
        body = json.dumps({"inputs": [tensor]}).encode().replace(json.dumps(tensor[field]).encode(), nested(1000), 1)
        with pytest.raises(ClientError) as info:
            parse_v2(body, NAMES, 4)
        assert info.value.status == 422 and "[[[[...]]]]" in info.value.message


def test_the_feature_hint_is_given_only_for_a_feature_named_twice() -> None:
    twice = b'{"instances": [{"a": 1, "b": 2, "c": 3}], "parameters": {"k": 1, "k": 2}}'
    with pytest.raises(ClientError) as info:
        parse_v1(twice, NAMES, 4)
    assert info.value.message == "the key 'k' appears twice in one JSON object; name each key once"
    with pytest.raises(ClientError, match=r"'a' appears twice .* \(each feature once per instance\)"):
        parse_v1(b'{"instances": [{"a": 1, "b": 2, "c": 3, "a": 4}]}', NAMES, 4)


def test_many_missing_features_are_counted_and_the_first_named() -> None:
    names = [f"f{i}" for i in range(12)]
    with pytest.raises(ClientError) as info:
        parse_v1(b'{"instances": [{"f0": 1, "zz": 2}]}', names, max_batch=4)
    assert (
        "11 missing features ['f1', 'f2', 'f3', 'f4', 'f5'] and 6 more, 1 unknown feature ['zz']" in info.value.message
    )


@pytest.mark.parametrize("rows", [2, 200])  # a few values are checked in Python, many by numpy
@pytest.mark.parametrize("value", [-1e39, 1e39])
def test_a_value_beyond_float32_is_named_in_small_and_large_batches(rows: int, value: float) -> None:
    matrix = [[1.5, -2.0, 3] for _ in range(rows)]
    assert parse_v1(json.dumps({"instances": matrix}).encode(), NAMES, max_batch=rows).shape == (rows, 3)
    matrix[rows - 1][1] = value
    with pytest.raises(ClientError) as info:
        parse_v1(json.dumps({"instances": matrix}).encode(), NAMES, max_batch=rows)
    assert info.value.code == "non_finite" and f"instances[{rows - 1}][1] (feature 'b')" in info.value.message

"""The Open Inference Protocol over gRPC beside HTTP in one real server: every call with the generated stub, the API
key as metadata, the same answers as HTTP V2, and a seeded fuzz of malformed tensors that never gets INTERNAL."""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from deploy.serving.grpc import tensors
from deploy.serving.grpc.v2 import grpc_predict_v2_pb2 as pb
from deploy.serving.grpc.v2.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from tests.serving_helpers import API_KEY, MODEL_NAME, Server, breast_cancer, free_port, run_server, shared_bundle

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("serving")]
KEY = (("x-api-key", API_KEY),)
MAX_BODY = 16384  # MLRELEASE_MAX_BODY_BYTES: the gRPC message limit too
CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}


class Running:
    """The server, its gRPC stub and its gRPC port."""

    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = GRPCInferenceServiceStub(self.channel)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    bundle = shared_bundle(tmp_path_factory, seed=0)
    port = free_port()
    with run_server(
        bundle,
        tmp_path_factory.mktemp("grpc-logs"),
        grpc_port=str(port),
        api_key=API_KEY,
        max_batch_size="64",
        max_body_bytes=str(MAX_BODY),
        args=("--model-version", "7"),
    ) as server:
        live = Running(server, port)
        yield live
        live.channel.close()


def infer_request(rows: np.ndarray, raw: bool = False, **fields: Any) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(**{"model_name": MODEL_NAME, **fields})
    tensor = message.inputs.add(name="input-0", datatype="FP32", shape=list(rows.shape))
    if raw:
        message.raw_input_contents.append(rows.astype("<f4").tobytes())
    else:
        tensor.contents.CopyFrom(tensors.contents("FP32", rows))
    return message


def code_of(call: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call(*args, timeout=10, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_every_call_and_the_same_answers_as_http_v2(running: Running) -> None:
    stub, url = running.stub, running.server.url
    x, _, _ = breast_cancer()
    rows = np.concatenate([x[:6], x[:2] * 3.0])
    assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME), metadata=KEY).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL_NAME), metadata=KEY)
    http_meta = httpx.get(f"{url}/v2/models/{MODEL_NAME}", headers={"x-api-key": API_KEY}).json()
    assert (meta.name, list(meta.versions), meta.platform) == (http_meta["name"], ["7"], http_meta["platform"])
    assert [(t.name, t.datatype, list(t.shape)) for t in [*meta.inputs, *meta.outputs]] == [
        (t["name"], t["datatype"], t["shape"]) for t in [*http_meta["inputs"], *http_meta["outputs"]]
    ]
    doc = {"id": "q", "inputs": [{"name": "i", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}]}
    http = httpx.post(f"{url}/v2/models/{MODEL_NAME}/infer", json=doc, headers={"x-api-key": API_KEY}).json()
    expected = {o["name"]: np.array(o["data"]) for o in http["outputs"]}
    for raw in (False, True):
        answer = stub.ModelInfer(infer_request(rows, raw, id="q"), metadata=KEY)
        assert (answer.model_name, answer.model_version, answer.id) == (MODEL_NAME, "7", "q")
        raws = list(answer.raw_output_contents) if raw else [None] * len(answer.outputs)
        got = {o.name: tensors.as_numpy(o, r) for o, r in zip(answer.outputs, raws, strict=True)}
        np.testing.assert_allclose(got["probabilities"].reshape(-1), expected["probabilities"], atol=1e-6)
        assert got["class"].tolist() == expected["class"].tolist()
    only = stub.ModelInfer(infer_request(rows[:1], outputs=[{"name": "class"}]), metadata=KEY)
    assert [o.name for o in only.outputs] == ["class"]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'mlrelease_requests_total{route="grpc:/v2/models/{name}/infer",status="200"} 3.0' in metrics


def test_the_api_key_travels_as_metadata_like_the_http_header(running: Running) -> None:
    stub = running.stub
    good = infer_request(np.ones((1, 30), dtype=np.float32))
    for metadata in ((), (("x-api-key", "wrong-" + API_KEY),), (("authorization", "Basic " + API_KEY),)):
        code, details = code_of(stub.ModelInfer, good, metadata=metadata)
        assert code is grpc.StatusCode.UNAUTHENTICATED and "missing or wrong API key" in details
        code, _ = code_of(stub.ModelMetadata, pb.ModelMetadataRequest(name=MODEL_NAME), metadata=metadata)
        assert code is grpc.StatusCode.UNAUTHENTICATED
    for metadata in (KEY, (("authorization", f"Bearer {API_KEY}"),)):
        assert code_of(stub.ModelInfer, good, metadata=metadata)[0] is grpc.StatusCode.OK
    assert stub.ServerReady(pb.ServerReadyRequest()).ready  # health needs no key, like /ready


def test_client_mistakes_get_the_http_message_and_a_client_code(running: Running) -> None:
    stub, url = running.stub, running.server.url
    wrong_shape = {"inputs": [{"name": "i", "shape": [2, 30], "datatype": "FP32", "data": [1.0] * 30}]}
    http = httpx.post(f"{url}/v2/models/{MODEL_NAME}/infer", json=wrong_shape, headers={"x-api-key": API_KEY})
    message = infer_request(np.ones((1, 30), dtype=np.float32))
    message.inputs[0].shape[:] = [2, 30]
    assert code_of(stub.ModelInfer, message, metadata=KEY) == (grpc.StatusCode.INVALID_ARGUMENT, http.json()["error"])
    other = infer_request(np.ones((1, 30), dtype=np.float32), model_name="other")
    assert code_of(stub.ModelInfer, other, metadata=KEY)[0] is grpc.StatusCode.NOT_FOUND
    assert code_of(stub.ModelReady, pb.ModelReadyRequest(name=MODEL_NAME, version="6"), metadata=KEY)[0] is (
        grpc.StatusCode.NOT_FOUND
    )
    too_big = infer_request(np.ones((64, 30), dtype=np.float64), raw=False)
    too_big.inputs[0].datatype = "FP64"
    too_big.inputs[0].contents.Clear()
    too_big.inputs[0].contents.fp64_contents.extend([1.0] * 64 * 30)  # 15 KB of values and their framing
    too_big.parameters["pad"].string_param = "x" * MAX_BODY
    assert code_of(stub.ModelInfer, too_big, metadata=KEY)[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    garbage = running.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    code, details = code_of(garbage, b"\xff\xff\xff", metadata=KEY)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "not a valid inference.ModelInferRequest" in details


DATATYPES = ["FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BYTES", "BOOL", "", "fp32", "FP8"]
FIELDS = ["fp32_contents", "fp64_contents", "int_contents", "int64_contents", "uint_contents", "bytes_contents"]
FLOATS = [0.0, 1.0, -1.0, 1e38, -3.5e38, 1e300, float("nan"), float("inf"), -float("inf"), 5e-324]


def malformed(rng: random.Random) -> pb.ModelInferRequest:
    """One request with a few things wrong (or, rarely, none): datatypes, shapes, contents, raw bytes, outputs."""
    message = pb.ModelInferRequest(model_name=rng.choice([MODEL_NAME] * 20 + ["", "x" * 300, "other"]))
    message.model_version = rng.choice([""] * 20 + ["7", "8", "\u00e9"])
    for _ in range(rng.choice([1, 1, 1, 1, 0, 2, 3])):
        tensor = message.inputs.add(name=rng.choice(["input-0", "", "x"]), datatype=rng.choice(DATATYPES))
        dims = [
            rng.choice([-(2**63), -1, 0, 1, 2, 29, 30, 31, 64, 65, 2**40]) for _ in range(rng.choice([0, 1, 2, 2, 3]))
        ]
        tensor.shape.extend(dims)
        for field in rng.sample(FIELDS, rng.choice([0, 1, 1, 2])):
            count = rng.choice([0, 1, 30, 60, 61, 300])
            values: list[Any]
            if field in ("fp32_contents", "fp64_contents"):
                values = [rng.choice(FLOATS) if rng.random() < 0.1 else rng.uniform(-50, 50) for _ in range(count)]
            elif field == "bytes_contents":
                values = [bytes([rng.randrange(256)]) for _ in range(count)]
            elif field.startswith("uint"):
                values = [rng.choice([0, 1, 255, 256, 70000, 2**32 - 1]) for _ in range(count)]
            else:
                values = [rng.choice([-(2**31), -129, -1, 0, 127, 128, 2**31 - 1]) for _ in range(count)]
            getattr(tensor.contents, field).extend(values)
    if rng.random() < 0.3:
        size = rng.choice([0, 3, 120, 240, 480, 7680])
        message.raw_input_contents.extend([rng.randbytes(size) for _ in range(rng.choice([1, 1, 2]))])
    for _ in range(rng.choice([0, 0, 1, 2])):
        message.outputs.add(name=rng.choice(["probabilities", "class", "logits", ""]))
    return message


def test_a_fuzz_of_malformed_tensors_never_gets_internal(running: Running) -> None:
    rng = random.Random(30)
    seen: dict[grpc.StatusCode, int] = {}
    for case in range(300):
        message = malformed(rng)
        code, details = code_of(running.stub.ModelInfer, message, metadata=KEY)
        seen[code] = seen.get(code, 0) + 1
        assert code in {*CLIENT_CODES, grpc.StatusCode.OK}, (case, code, details, message)
        assert code is grpc.StatusCode.OK or (details and "\n" not in details and len(details) < 600), details
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 200, seen  # most cases reach the tensor checks
    assert running.stub.ServerReady(pb.ServerReadyRequest()).ready
    good = running.stub.ModelInfer(infer_request(np.ones((2, 30), dtype=np.float32)), metadata=KEY)
    assert list(good.outputs[0].shape) == [2, 2]
    metrics = httpx.get(f"{running.server.url}/metrics").text
    assert 'route="grpc:/v2/models/{name}/infer",status="500"' not in metrics


def test_sigterm_stops_grpc_with_http_cleanly(running: Running) -> None:
    """Last in this module: calls in flight at SIGTERM are answered (or refused as UNAVAILABLE, never cut off),
    and the server drains both protocols and exits without a traceback."""
    process = running.server.process
    calls = [
        running.stub.ModelInfer.future(infer_request(np.ones((32, 30), dtype=np.float32)), metadata=KEY, timeout=20)
        for _ in range(40)
    ]
    process.send_signal(signal.SIGTERM)
    outcomes = {code_of(lambda timeout, call=call: call.result(timeout))[0] for call in calls}
    assert outcomes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
    assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
    log = running.server.log()
    assert "Application shutdown complete" in log and "Traceback" not in log
    assert code_of(running.stub.ServerLive, pb.ServerLiveRequest())[0] is grpc.StatusCode.UNAVAILABLE

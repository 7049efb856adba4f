"""The model server over real HTTP on loopback: predictions, metadata, bad input, metrics, security."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serving_helpers import (
    ADMIN_TOKEN,
    API_KEY,
    MODEL_NAME,
    REPO,
    Server,
    breast_cancer,
    free_port,
    run_server,
    server_env,
    shared_bundle,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("serving")]
PREDICT = f"/v1/models/{MODEL_NAME}:predict"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory, seed=0)


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(
        bundle,
        tmp_path_factory.mktemp("logs"),
        max_body_bytes="8192",
        max_batch_size="64",
        args=("--model-version", "7"),
    ) as running:
        yield running


def post(server: Server, path: str, body: bytes | str, content_type: str = "application/json") -> httpx.Response:
    data = body.encode() if isinstance(body, str) else body
    return httpx.post(server.url + path, content=data, headers={"Content-Type": content_type}, timeout=10)


def test_predict_rows_and_named_features_match_the_module(server: Server, bundle: Path) -> None:
    import torch

    x, _, names = breast_cancer()
    rows = x[:3]
    response = httpx.post(server.url + PREDICT, json={"instances": rows.tolist()}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == MODEL_NAME and body["model_version"] == "7"
    expected = torch.jit.load(str(bundle / "model.pt"))(torch.from_numpy(rows)).detach().numpy()
    got = np.array([p["probabilities"] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [p["class"] for p in body["predictions"]] == [["malignant", "benign"][k] for k in expected.argmax(1)]
    keyed = [{n: float(v) for n, v in zip(names, row, strict=True)} for row in rows]
    again = httpx.post(server.url + PREDICT, json={"instances": keyed}, timeout=10).json()
    assert again["predictions"] == body["predictions"]


def test_the_numpy_runner_answers_like_the_module_over_http(bundle: Path, tmp_path: Path) -> None:
    """MLRELEASE_MODEL_RUNTIME=auto: the checked numpy lowering serves, and its answers are the module's."""
    import torch

    x, _, _ = breast_cancer()
    rows = np.concatenate([x[:20], x[:4] * 50.0])  # training-range rows and far-out ones
    with run_server(bundle, tmp_path, model_runtime="auto") as running:
        assert httpx.get(f"{running.url}/v1/models/{MODEL_NAME}").json()["runtime"] == "numpy"
        response = httpx.post(running.url + PREDICT, json={"instances": rows.tolist()}, timeout=10)
    assert response.status_code == 200, response.text
    expected = torch.jit.load(str(bundle / "model.pt"))(torch.from_numpy(rows.astype(np.float32))).detach().numpy()
    got = np.array([p["probabilities"] for p in response.json()["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_v2_infer_and_metadata(server: Server) -> None:
    x, _, names = breast_cancer()
    doc = {
        "id": "abc",
        "inputs": [{"name": "input-0", "shape": [2, 30], "datatype": "FP32", "data": x[:2].reshape(-1).tolist()}],
    }
    response = httpx.post(f"{server.url}/v2/models/{MODEL_NAME}/infer", json=doc, timeout=10)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["id"] == "abc" and out["outputs"][0]["shape"] == [2, 2] and len(out["outputs"][1]["data"]) == 2
    doc["outputs"] = [{"name": "class"}]  # a client may ask for some outputs only
    only = httpx.post(f"{server.url}/v2/models/{MODEL_NAME}/infer", json=doc, timeout=10).json()["outputs"]
    assert [o["name"] for o in only] == ["class"] and only[0]["data"] == out["outputs"][1]["data"]
    meta = httpx.get(f"{server.url}/v1/models/{MODEL_NAME}").json()
    assert meta["signature"]["inputs"]["feature_names"] == names and meta["version"] == "7"
    assert len(meta["sha256"]) == 64 and meta["runtime"] == "torchscript"
    assert httpx.get(f"{server.url}/v2/models/{MODEL_NAME}").json()["inputs"][0]["shape"] == [-1, 30]
    assert httpx.get(f"{server.url}/health").status_code == 200
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["ready"] is True and ready["sha256"] == meta["sha256"]
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/models/{name}:predict" in schema["paths"] and schema["openapi"].startswith("3.")
    model_ready = httpx.get(f"{server.url}/v2/models/{MODEL_NAME}/ready")
    assert model_ready.status_code == 200 and model_ready.json() == {"name": MODEL_NAME, "ready": True}
    for path in ("/v2/models/{name}", "/v2/models/{name}/ready", "/v2/health/live", "/v2/health/ready"):
        assert path in schema["paths"], sorted(schema["paths"])  # so the fuzzer reaches them too


ROW = "[" + ",".join(["1.0"] * 30) + "]"
BAD = [
    ("malformed JSON", b'{"instances": [', "application/json", 400, "malformed_json"),
    ("wrong content type", '{"instances": [' + ROW + "]}", "text/plain", 415, "unsupported_media_type"),
    ("no content type", '{"instances": [' + ROW + "]}", "", 415, "unsupported_media_type"),
    ("wrong feature count", '{"instances": [[1, 2, 3]]}', "application/json", 422, "wrong_feature_count"),
    ("wrong feature names", '{"instances": [{"radius": 1}]}', "application/json", 422, "wrong_features"),
    (
        "non-numeric",
        '{"instances": [' + ROW.replace("1.0", '"a"', 1) + "]}",
        "application/json",
        422,
        "non_numeric",
    ),
    ("NaN", '{"instances": [' + ROW.replace("1.0", "NaN", 1) + "]}", "application/json", 400, "non_finite"),
    (
        "Inf as 1e999",
        '{"instances": [' + ROW.replace("1.0", "1e999", 1) + "]}",
        "application/json",
        422,
        "non_finite",
    ),
    (
        "float32 overflow",
        '{"instances": [' + ROW.replace("1.0", "1e39", 1) + "]}",
        "application/json",
        422,
        "non_finite",
    ),
    ("empty instances", '{"instances": []}', "application/json", 422, "empty_instances"),
    (
        "batch over the limit",
        '{"instances": [' + ",".join(["[1]"] * 65) + "]}",
        "application/json",
        422,
        "batch_too_large",
    ),
    (
        "body over the size limit",
        '{"instances": [' + ",".join([ROW] * 80) + "]}",
        "application/json",
        413,
        "body_too_large",
    ),
]


@pytest.mark.parametrize(("case", "body", "ctype", "status", "code"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_named_4xx_and_the_server_stays_ready(
    server: Server, case: str, body: bytes | str, ctype: str, status: int, code: str
) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    data = body.encode() if isinstance(body, str) else body
    response = httpx.post(server.url + PREDICT, content=data, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == code and error["status"] == status and error["error"]
    assert httpx.get(f"{server.url}/ready").status_code == 200


def test_values_the_model_overflows_on_get_a_422_and_spare_the_requests_batched_with_them(server: Server) -> None:
    """1e37 is a finite float32, but over a feature's training scale it overflows inside the model: the answer was
    a 200 with null probabilities and a made-up class. Requests coalesced into the same batch still get theirs."""
    import asyncio

    x, _, _ = breast_cancer()
    far = [1e37] * x.shape[1]
    bad = {"instances": [x[0].tolist(), far]}
    answer = httpx.post(server.url + PREDICT, json=bad, timeout=10)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "non_finite_output" and answer.json()["error"].startswith("row 1 of the request")
    v2 = {"inputs": [{"name": "input", "shape": [1, len(far)], "datatype": "FP32", "data": far}]}
    v2_answer = httpx.post(f"{server.url}/v2/models/{MODEL_NAME}/infer", json=v2, timeout=10)
    assert v2_answer.status_code == 422 and v2_answer.json()["code"] == "non_finite_output", v2_answer.text

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            bodies = [{"instances": [row]} for row in x[:15].tolist()] + [bad]
            return await asyncio.gather(*(client.post(server.url + PREDICT, json=b) for b in bodies * 4))

    statuses = [r.status_code for r in asyncio.run(together())]
    assert statuses == ([200] * 15 + [422]) * 4
    assert httpx.get(f"{server.url}/ready").status_code == 200


def test_routing_errors(server: Server) -> None:
    assert post(server, "/v1/models/other:predict", '{"instances": [' + ROW + "]}").status_code == 404
    wrong_method = httpx.get(server.url + PREDICT)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert httpx.get(f"{server.url}/nope").json()["code"] == "not_found"
    body = '{"instances": [' + ROW + "]}"
    for method, path in (
        ("POST", f"/v1/models/{MODEL_NAME}:predict/"),  # used to be 405 "use GET", as if it were the metadata
        ("GET", f"/v1/models/{MODEL_NAME}/"),  # used to be 404 "model '...' is not served here"
        ("POST", f"/v2/models/{MODEL_NAME}/versions/7/infer"),
    ):
        answer = httpx.request(method, server.url + path, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 404 and answer.json()["code"] == "not_found", (path, answer.text)
        assert path in answer.json()["error"]
    assert post(server, "/admin/reload", "{}").json()["code"] == "admin_disabled"


def test_metrics_cover_requests_batches_classes_model_and_drift(server: Server) -> None:
    x, _, _ = breast_cancer()
    assert httpx.post(server.url + PREDICT, json={"instances": x[:8].tolist()}).status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    assert 'mlrelease_requests_total{route="/v1/models/{name}:predict",status="200"}' in text
    assert 'mlrelease_request_duration_seconds_bucket{le="0.01",route="/v1/models/{name}:predict"}' in text
    assert "mlrelease_batch_size_bucket" in text
    assert re.search(r'mlrelease_predictions_total{class="(malignant|benign)",model_version="7"} [1-9]', text)
    assert f'mlrelease_model_info{{name="{MODEL_NAME}",sha256=' in text
    assert 'mlrelease_feature_drift_psi{feature="mean radius"}' in text
    lag = re.search(r"^mlrelease_event_loop_lag_seconds_count (\S+)$", text, re.MULTILINE)
    assert lag is not None and float(lag.group(1)) > 0  # sampled every 20 ms since the server started
    from benchmarks.serving.probes import loop_lag

    buckets = loop_lag(server.url)  # what the serving benchmark reads around each paced point
    assert buckets is not None and buckets[float("inf")] >= buckets[0.01] > 0
    assert 'status="500"' not in text


def _gc_collected(server: Server) -> float:
    """Objects the server's cyclic garbage collector has found so far, over all generations (python_gc_*)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics").text
    families = text_string_to_metric_families(text)
    return sum(s.value for f in families for s in f.samples if s.name == "python_gc_objects_collected_total")


def test_predictions_leave_no_cyclic_garbage(bundle: Path, tmp_path: Path) -> None:
    """A prediction's objects are freed when it is answered: none wait for the cyclic collector, whose collections
    would stall the event loop for every request in flight (a reference cycle left about 11 objects a request).
    A server of its own: the shared one's collector may find garbage the other tests' requests left."""
    with run_server(bundle, tmp_path) as fresh:
        for _ in range(20):  # first-call caches and lazy imports are not per-request garbage
            assert post(fresh, PREDICT, '{"instances": [' + ROW + "]}").status_code == 200
        before = _gc_collected(fresh)
        for _ in range(400):
            assert post(fresh, PREDICT, '{"instances": [' + ROW + "]}").status_code == 200
        assert _gc_collected(fresh) - before < 200  # over 10,000 with the cycle


def test_the_benchmark_reads_which_runtime_answers(server: Server) -> None:
    """The serving benchmark labels the numpy-runner row by what the server's metadata says really answers."""
    from benchmarks.serving.servers import Candidate, served_runtime

    ours = Candidate("mlrelease", "ours", PREDICT, b"{}", lambda port: [], {}, "/ready")
    assert served_runtime(server.url, ours) == "torchscript"
    mlflow_like = Candidate("mlflow", "mlflow", "/invocations", b"{}", lambda port: [], {}, "/ping")
    assert served_runtime(server.url, mlflow_like) is None


def test_api_key_and_rate_limit(bundle: Path, tmp_path: Path) -> None:
    # loopback is a trusted proxy here, as for a server behind the local target's nginx (trusted by default: none)
    settings = {
        "api_key": API_KEY,
        "rate_limit_per_second": "0.01",
        "rate_limit_burst": "4",
        "trusted_proxies": "127.0.0.1",
    }
    with run_server(bundle, tmp_path, enable_admin="true", admin_token=ADMIN_TOKEN, **settings) as srv:
        body = '{"instances": [' + ROW + "]}"
        auth = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
        wrong = {**auth, "Authorization": "Bearer " + "x" * len(API_KEY)}
        statuses = [
            post(srv, PREDICT, body).status_code,
            httpx.post(srv.url + PREDICT, content=body, headers=auth).status_code,
            httpx.post(srv.url + PREDICT, content=body, headers=wrong).status_code,
            httpx.post(
                srv.url + PREDICT, content=body, headers={"Content-Type": "application/json", "X-API-Key": API_KEY}
            ).status_code,
            httpx.post(srv.url + PREDICT, content=body, headers=auth).status_code,
        ]
        assert statuses == [401, 200, 401, 200, 429]  # requests without the key used up the burst as well
        limited = httpx.post(srv.url + PREDICT, content=body, headers=auth)
        assert limited.json()["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        # the limit comes before any credential check: guessing a key or the admin token is limited too
        assert httpx.post(srv.url + PREDICT, content=body, headers=wrong).status_code == 429
        guess = {"Authorization": "Bearer " + "y" * len(ADMIN_TOKEN)}
        assert httpx.post(f"{srv.url}/admin/reload", json={}, headers=guess).status_code == 429
        # behind the loopback nginx (a trusted proxy) X-Forwarded-For names the client: another bucket
        proxied = {**auth, "X-Forwarded-For": "203.0.113.9"}
        assert httpx.post(srv.url + PREDICT, content=body, headers=proxied).status_code == 200
        assert httpx.get(f"{srv.url}/ready").status_code == 200


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"enable_admin": "true"}, "ADMIN_TOKEN"),
        ({"enable_admin": "true", "admin_token": "changeme"}, "placeholder"),
        ({"torch_threads": "64"}, "exceeds"),
    ],
)
def test_unsafe_configuration_refuses_to_start(bundle: Path, settings: dict[str, str], fragment: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.serving", "--model-dir", str(bundle), "--port", str(free_port())],
        cwd=REPO,
        env=server_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to start" in proc.stderr and fragment in proc.stderr


def test_checksum_mismatch_never_becomes_ready(bundle: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    card = json.loads((tampered / "model_card.json").read_text())
    card["sha256"] = "0" * 64
    (tampered / "model_card.json").write_text(json.dumps(card))
    with run_server(tampered, tmp_path, wait=False, admin_token=ADMIN_TOKEN) as srv:
        from tests.serving_helpers import wait_ready

        with pytest.raises(TimeoutError, match="sha256"):
            wait_ready(srv.url, srv.process, timeout=15)
        ready = httpx.get(f"{srv.url}/ready").json()
        assert ready["failed"] is True and "does not match model card" in ready["reason"]
        assert post(srv, PREDICT, '{"instances": [' + ROW + "]}").status_code == 503

"""Production hardening over real sockets on loopback: HEAD, the header-read timeout, the per-client cap on half-open
connections, and the circuit breaker healing itself through /ready.

One server, with short limits, on a bundle whose model raises on a sentinel input (the first feature 12345.0), so a
test can make the model fail on demand.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from tests.serving_helpers import MODEL_NAME, Server, breast_cancer, run_server, shared_bundle

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("serving")]
PREDICT = f"/v1/models/{MODEL_NAME}:predict"
SENTINEL = 12345.0
HEADER_TIMEOUT_S = 0.5
LIMITS = {"header_timeout_s": str(HEADER_TIMEOUT_S), "max_half_open_per_client": "2"}
BREAKER = {"breaker_failures": "3", "breaker_reset_s": "0.5"}


class FailsOnSentinel(torch.nn.Module):
    """The bundle's model, raising on any row whose first feature is SENTINEL (a model fault on demand)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] == 12345.0).any()):
            raise RuntimeError("model fault on the sentinel row")
        return self.inner(x)


def failing_bundle(base: Path, dest: Path) -> Path:
    """``base`` with its module wrapped in FailsOnSentinel (card checksum updated, reference statistics kept)."""
    from mlrelease.core.modelcard import CARD_FILE, MODEL_FILE, REFERENCE_FILE, ModelCard, sha256_file

    dest.mkdir(parents=True)
    torch.jit.save(torch.jit.script(FailsOnSentinel(torch.jit.load(str(base / MODEL_FILE)))), str(dest / MODEL_FILE))
    card = ModelCard.model_validate_json((base / CARD_FILE).read_text())
    card.model_copy(update={"sha256": sha256_file(dest / MODEL_FILE)}).write(dest)
    shutil.copy(base / REFERENCE_FILE, dest / REFERENCE_FILE)
    return dest


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = shared_bundle(tmp_path_factory, seed=0)
    bundle = failing_bundle(base, tmp_path_factory.mktemp("hardening") / "bundle")
    with run_server(bundle, tmp_path_factory.mktemp("hardening-logs"), **LIMITS, **BREAKER) as running:
        yield running


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.settimeout(5)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as a close)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_head_sends_gets_status_and_headers_without_the_body(server: Server) -> None:
    """HEAD then GET pipelined on one connection: had HEAD sent a body, the GET's answer would not follow it."""
    for path in ("/health", "/ready", "/openapi.json", f"/v1/models/{MODEL_NAME}", f"/v2/models/{MODEL_NAME}/ready"):
        body = httpx.get(server.url + path, timeout=5).content
        with connect(server) as sock:
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\nGET {path} HTTP/1.1\r\nHost: t\r\n".encode())
            sock.sendall(b"Connection: close\r\n\r\n")
            data = read_until_closed(sock)
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200") and f"content-length: {len(body)}".encode() in head, (path, head)
        assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(body), (path, rest[:200])


def test_headers_that_trickle_get_a_408_and_a_silent_connection_is_closed(server: Server) -> None:
    start = time.monotonic()
    with connect(server) as trickle, connect(server) as silent:
        trickle.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\n".encode())
        answer, nothing = read_until_closed(trickle), read_until_closed(silent)
    assert time.monotonic() - start < 3
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"header_timeout"' in answer
    assert nothing == b""
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert float(re.search(r"^mlrelease_header_timeouts_total (\S+)$", metrics, re.M).group(1)) >= 2  # type: ignore[union-attr]


def test_a_client_over_the_half_open_cap_has_new_connections_closed_at_once(server: Server) -> None:
    with connect(server) as first, connect(server) as second:
        for sock in (first, second):
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.1)  # both are read: each holds a slot
        started = time.monotonic()
        with connect(server) as third:
            refused = read_until_closed(third)
        refused_after = time.monotonic() - started
        cut = [read_until_closed(sock) for sock in (first, second)]
    assert refused == b"" and refused_after < HEADER_TIMEOUT_S  # closed at once, not by the timeout
    assert all(data.startswith(b"HTTP/1.1 408") for data in cut)
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200  # the slots are free again
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert re.search(r"^mlrelease_half_open_refused_total [1-9]", metrics, re.M)


def _metric(server: Server, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", httpx.get(server.url + "/metrics", timeout=5).text, re.M)
    assert match, name
    return float(match.group(1))


def test_the_breaker_opens_on_model_faults_and_heals_through_ready(server: Server) -> None:
    x, _, _ = breast_cancer()
    good = {"instances": [x[0].tolist()]}
    bad = {"instances": [[SENTINEL, *x[0].tolist()[1:]]]}
    faults = [httpx.post(server.url + PREDICT, json=bad, timeout=5).status_code for _ in range(3)]
    assert faults == [500, 500, 500]
    refused = httpx.post(server.url + PREDICT, json=good, timeout=5)
    assert refused.status_code == 503 and refused.json()["code"] == "circuit_open", refused.text
    assert int(refused.headers["retry-after"]) >= 1
    ready = httpx.get(server.url + "/ready", timeout=5)
    assert ready.status_code == 503 and "circuit open" in ready.json()["reason"]
    assert _metric(server, "mlrelease_breaker_open") == 1 and _metric(server, "mlrelease_breaker_opens_total") == 1
    deadline = time.monotonic() + 5
    while httpx.get(server.url + "/ready", timeout=5).status_code != 200:  # past the reset, /ready probes
        assert time.monotonic() < deadline, "the breaker did not close"
        time.sleep(0.1)
    assert httpx.post(server.url + PREDICT, json=good, timeout=5).status_code == 200
    assert _metric(server, "mlrelease_breaker_open") == 0
    route = 'mlrelease_requests_total{route="/v1/models/{name}:predict",status="500"}'
    assert _metric(server, re.escape(route)) == 3  # the faults themselves, nothing after them

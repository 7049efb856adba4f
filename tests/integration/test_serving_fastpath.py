"""The prediction fast path (deploy/serving/fastpath.py) against the ASGI path, over real sockets on loopback.

Two servers on the same bundle, one with MLRELEASE_FAST_PATH=false: every request gets the same status and
body from both. Raw sockets check what an HTTP client library would hide: pipelining order, keep-alive,
Connection: close and HTTP/1.0, a client that leaves mid-request.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.serving_helpers import API_KEY, MODEL_NAME, Server, breast_cancer, run_server, shared_bundle

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("serving")]
PREDICT = f"/v1/models/{MODEL_NAME}:predict"
INFER = f"/v2/models/{MODEL_NAME}/infer"
SETTINGS = {"max_body_bytes": "4096", "max_batch_size": "8", "api_key": API_KEY, "keep_alive_s": "2"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    bundle = shared_bundle(tmp_path_factory, seed=0)
    logs = tmp_path_factory.mktemp("fastpath-logs")
    with run_server(bundle, logs, **SETTINGS) as fast, run_server(bundle, logs, fast_path="false", **SETTINGS) as asgi:
        yield fast, asgi


def fast_count(server: Server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    match = re.search(r"^mlrelease_fast_path_requests_total (\S+)$", text, re.M)
    assert match, text[:500]
    return float(match.group(1))


def cases() -> list[tuple[str, str, dict[str, str], bytes]]:
    """(name, path, headers, body): good requests and client mistakes that both paths must answer alike."""
    x, _, names = breast_cancer()
    row = [round(float(v), 4) for v in x[0]]
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    v1 = json.dumps({"instances": [row, row]}).encode()
    keyed = json.dumps({"instances": [dict(zip(names, row, strict=True))]}).encode()
    v2 = json.dumps({"id": "r1", "inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP32", "data": row}]})
    v2_class = json.dumps({**json.loads(v2), "outputs": [{"name": "class"}]}).encode()
    twice = keyed.replace(b"[{", b'[{"' + names[0].encode() + b'": 0, ', 1)  # the first feature named twice
    return [
        ("v1 rows", PREDICT, auth, v1),
        ("v1 named", PREDICT, auth, keyed),
        ("v2", INFER, auth, v2.encode()),
        ("v2 class only", INFER, auth, v2_class),
        ("v2 unknown output", INFER, auth, v2_class.replace(b'"class"}]', b'"logits"}]')),
        ("feature twice", PREDICT, auth, twice),
        ("no key", PREDICT, {"Content-Type": "application/json"}, v1),
        ("wrong key", PREDICT, {**auth, "Authorization": "Bearer nope"}, v1),
        ("text body", PREDICT, {**auth, "Content-Type": "text/plain"}, v1),
        ("gzip body", PREDICT, {**auth, "Content-Encoding": "gzip"}, v1),
        ("latin-1 body", PREDICT, {**auth, "Content-Type": "application/json; charset=ISO-8859-1"}, v1),
        ("utf-8 charset", PREDICT, {**auth, "Content-Type": "application/json; charset=UTF-8"}, v1),
        ("bad json", PREDICT, auth, b'{"instances": [1,'),
        ("nan", PREDICT, auth, b'{"instances": [[NaN]]}'),
        ("few features", PREDICT, auth, b'{"instances": [[1, 2, 3]]}'),
        ("empty", PREDICT, auth, b'{"instances": []}'),
        ("over batch", PREDICT, auth, json.dumps({"instances": [row] * 9}).encode()),
        ("over size", PREDICT, auth, json.dumps({"instances": [row] * 20}).encode()),
        ("other model", "/v1/models/other:predict", auth, v1),
        ("query string", PREDICT + "?x=1", auth, v1),
    ]


@pytest.mark.parametrize("case", cases(), ids=lambda c: c[0])
def test_fast_and_asgi_paths_answer_alike(servers: tuple[Server, Server], case: tuple) -> None:
    _, path, headers, body = case
    fast, asgi = servers
    answers = [httpx.post(s.url + path, content=body, headers=headers, timeout=10) for s in (fast, asgi)]
    assert answers[0].status_code == answers[1].status_code, [a.text for a in answers]
    assert answers[0].json() == answers[1].json()
    assert answers[0].status_code < 500
    for name in ("content-type", "www-authenticate", "retry-after", "accept-encoding"):
        assert answers[0].headers.get(name) == answers[1].headers.get(name)


def test_the_fast_path_answers_plain_predictions_only(servers: tuple[Server, Server]) -> None:
    fast, asgi = servers
    _, path, headers, body = cases()[0]
    before = fast_count(fast)
    assert httpx.post(fast.url + path, content=body, headers=headers, timeout=10).status_code == 200
    assert fast_count(fast) == before + 1
    assert httpx.post(fast.url + path + "?q=1", content=body, headers=headers, timeout=10).status_code == 200
    assert fast_count(fast) == before + 1  # a query string goes through ASGI
    assert httpx.post(asgi.url + path, content=body, headers=headers, timeout=10).status_code == 200
    assert fast_count(asgi) == 0


def _request(path: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    head = (
        f"POST {path} HTTP/{version}\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def _read_responses(sock: socket.socket, count: int, deadline: float = 10.0) -> list[tuple[int, bytes, bytes]]:
    """``count`` responses as (status, headers, body), read by Content-Length; fewer if the server closes."""
    sock.settimeout(deadline)
    data = b""
    found: list[tuple[int, bytes, bytes]] = []
    while len(found) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end]
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
            if len(data) >= end + 4 + length:
                found.append((int(head.split(b" ")[1]), head, data[end + 4 : end + 4 + length]))
                data = data[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return found


def test_pipelined_requests_are_answered_in_order(servers: tuple[Server, Server]) -> None:
    fast, _ = servers
    port = int(fast.url.rsplit(":", 1)[1])
    _, _, _, body = cases()[0]
    bad = b'{"instances": [[1, 2]]}'
    metadata = f"GET /v1/models/{MODEL_NAME} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()
    burst = _request(PREDICT, body) + _request(PREDICT, bad) + metadata + _request(PREDICT, body)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(burst)
        answers = _read_responses(sock, 4)
    assert [status for status, _, _ in answers] == [200, 422, 200, 200]
    assert b"predictions" in answers[0][2] and b"wrong_feature" in answers[1][2]
    assert b'"signature"' in answers[2][2] or b"inputs" in answers[2][2]
    assert answers[3][2] == answers[0][2]


@pytest.mark.parametrize(
    ("extra", "version"),
    [
        ("Connection: close\r\n", "1.1"),
        ("", "1.0"),
        ("Connection: keep-alive\r\n", "1.0"),
        ("Proxy-Connection: keep-alive\r\n", "1.0"),
    ],
)
def test_connection_close_and_http10_close_after_the_answer(
    servers: tuple[Server, Server], extra: str, version: str
) -> None:
    fast, _ = servers
    port = int(fast.url.rsplit(":", 1)[1])
    _, _, _, body = cases()[0]
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_request(PREDICT, body, extra, version))
        answers = _read_responses(sock, 1)
        assert answers and answers[0][0] == 200
        assert b"connection: close" in answers[0][1].lower()
        sock.settimeout(5)
        assert sock.recv(1) == b""  # the server closed its end


@pytest.mark.parametrize("which", ["fast", "asgi"])
def test_a_connection_in_use_stays_open_and_an_idle_one_closes_after_the_keep_alive_timeout(
    servers: tuple[Server, Server], which: str
) -> None:
    """MLRELEASE_KEEP_ALIVE_S=2 here: requests (predictions and metadata) 0.3 s apart for 4.5 s are all answered
    on one connection; once it is left idle, the server closes it after about two seconds."""
    server = servers[0] if which == "fast" else servers[1]
    port = int(server.url.rsplit(":", 1)[1])
    _, _, _, body = cases()[0]
    metadata = f"GET /v1/models/{MODEL_NAME} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for i in range(16):
            if i:
                time.sleep(0.3)
            sock.sendall(_request(PREDICT, body) if i % 3 else metadata)
            answers = _read_responses(sock, 1)
            assert answers and answers[0][0] == 200, f"request {i} on the kept-alive connection: {answers}"
        idle_from = time.monotonic()  # just after the server's last answer
        sock.settimeout(15)
        assert sock.recv(1) == b""  # the server closed its end ...
        assert time.monotonic() - idle_from > 1.5  # ... once idle for the timeout, not at once


def _client_gone(server: Server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    found = re.findall(r'^mlrelease_requests_total\{.*status="499"\} (\S+)$', text, re.M)  # routes hold {name}
    return sum(float(v) for v in found)


def test_a_client_that_leaves_mid_request_does_not_hurt_the_server(servers: tuple[Server, Server]) -> None:
    fast, asgi = servers
    _, _, _, body = cases()[0]
    for server in servers:  # gone mid-body: both paths count the request as a 499
        gone_before = _client_gone(server)
        for cut in (10, len(body) // 2):
            with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
                sock.sendall(_request(PREDICT, body)[: -len(body) + cut])
        deadline = time.monotonic() + 5
        while _client_gone(server) < gone_before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _client_gone(server) == gone_before + 2, server.url
    port = int(fast.url.rsplit(":", 1)[1])
    for _ in range(20):  # whole requests, then gone before the answer
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_request(PREDICT, body))
    time.sleep(0.2)
    assert httpx.get(fast.url + "/ready", timeout=10).status_code == 200
    _, path, headers, body = cases()[0]
    assert httpx.post(fast.url + path, content=body, headers=headers, timeout=10).status_code == 200
    assert 'status="500"' not in httpx.get(fast.url + "/metrics", timeout=10).text


def _raw_answer(server: Server, raw: bytes) -> tuple[int, bytes, bytes]:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(raw)
        answers = _read_responses(sock, 1)
        sock.settimeout(5)
        assert answers, f"no answer to {raw[:80]!r}"
        return answers[0]


def raw_cases() -> list[tuple[str, bytes, int, str]]:
    """(name, raw request, status, error code): what an HTTP client library would not send."""
    _, _, _, body = cases()[0]
    upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    websocket_get = f"GET /health HTTP/1.1\r\nHost: t\r\n{upgrade}Sec-WebSocket-Version: 13\r\n\r\n".encode()
    two_lengths = _request(PREDICT, body, f"Content-Length: {len(body) + 1}\r\n")
    return [
        (
            "websocket on a prediction",
            _request(PREDICT, body, upgrade + "Sec-WebSocket-Version: 13\r\n"),
            400,
            "upgrade",
        ),
        ("websocket on /health", websocket_get, 400, "upgrade_not_supported"),
        ("h2c from curl --http2", _request(PREDICT, body, h2c), 400, "upgrade_not_supported"),
        ("two content lengths", two_lengths, 400, "malformed_http"),
        ("a fragment in the path", _request(f"/v1/models/{MODEL_NAME}#x:predict", body), 405, "method_not_allowed"),
    ]


@pytest.mark.parametrize("case", raw_cases(), ids=lambda c: c[0])
def test_upgrades_and_broken_framing_get_a_json_error_on_both_paths(
    servers: tuple[Server, Server], case: tuple[str, bytes, int, str]
) -> None:
    """Upgrades used to answer 500 (WebSocket), hang, or lose a valid body ("empty body" to `curl --http2`);
    framing errors answered uvicorn's plain text."""
    _, raw, status, code = case
    answers = [_raw_answer(server, raw) for server in servers]
    assert [a[0] for a in answers] == [status, status], answers
    for _, head, body in answers:
        assert b"application/json" in head.lower() and json.loads(body)["code"].startswith(code), body
        assert json.loads(body)["status"] == status and json.loads(body)["error"], body
    assert answers[0][2] == answers[1][2]
    for server in servers:
        assert httpx.get(server.url + "/ready", timeout=10).status_code == 200


@pytest.mark.parametrize("bad", ["garbage", "two content lengths", "websocket", "broken chunked body"])
def test_requests_pipelined_before_bad_bytes_are_answered_before_the_refusal_on_both_paths(
    servers: tuple[Server, Server], bad: str
) -> None:
    """A prediction and a metadata request, then bytes the parser cannot frame, in one write: both answers come
    first, then the JSON 400, then the server closes, also when the client half-closes after its write (the
    refusal used to cut the answers still owed; after a request with a broken chunked body, until 2026-11-30
    too, and a half-close then dropped the 400)."""
    _, _, _, body = cases()[0]
    metadata = f"GET /v1/models/{MODEL_NAME} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()
    tail = {
        "garbage": b"\x00\x01 not HTTP at all\r\n\r\n",
        "two content lengths": _request(PREDICT, body, f"Content-Length: {len(body) + 1}\r\n"),
        "websocket": _request(PREDICT, body, "Connection: Upgrade\r\nUpgrade: websocket\r\n"),
        "broken chunked body": (
            f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Transfer-Encoding: chunked\r\n\r\nzz\r\n"
        ).encode(),
    }[bad]
    for server in servers:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_request(PREDICT, body) + metadata + tail)
            sock.shutdown(socket.SHUT_WR)  # a client done sending (`nc -N`) is owed the same answers
            answers = _read_responses(sock, 4)
            assert [status for status, _, _ in answers] == [200, 200, 400], (server.url, answers)
            assert b"predictions" in answers[0][2] and json.loads(answers[2][2])["status"] == 400
            sock.settimeout(5)
            assert sock.recv(1) == b""  # closed after the refusal
        assert httpx.get(server.url + "/ready", timeout=10).status_code == 200


def test_a_client_that_half_closes_after_its_request_gets_the_answer_on_both_paths(
    servers: tuple[Server, Server],
) -> None:
    """shutdown(SHUT_WR) once the request is sent (`nc -N`): the ASGI path used to drop the answer (and count a
    200); now both answer, then close. A request cut short by the half-close is a disconnect, and the server
    stays ready."""
    _, _, _, body = cases()[0]
    answers = []
    for server in servers:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_request(PREDICT, body))
            sock.shutdown(socket.SHUT_WR)
            found = _read_responses(sock, 1)
            assert found and found[0][0] == 200, (server.url, found)
            sock.settimeout(5)
            assert sock.recv(1) == b""  # and the server closed its end (with or without a Connection: close)
            answers.append(found[0][2])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_request(PREDICT, body)[:-10])
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            assert sock.recv(65536) == b""  # closed without an answer: the request never arrived whole
        assert httpx.get(server.url + "/ready", timeout=10).status_code == 200
    assert answers[0] == answers[1]

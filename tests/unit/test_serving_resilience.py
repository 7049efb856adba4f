"""Production hardening of the model server without a process: request content checks, HEAD, metadata protection,
overload shedding, the circuit breaker, the X-Forwarded-For default, and the header-read timeout with the
per-client cap on half-open connections (driven on the protocol object, as test_serving_fastpath_protocol does)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import uvicorn
from pydantic import ValidationError
from uvicorn.server import ServerState

from deploy.serving import transport as transport_module
from deploy.serving.app import ModelServer
from deploy.serving.asgi import check_content_type
from deploy.serving.batcher import MicroBatcher
from deploy.serving.config import ServingSettings
from deploy.serving.fastpath import protocol_for
from deploy.serving.model import LoadedModel
from deploy.serving.payload import ClientError
from deploy.serving.prediction import Serving
from deploy.serving.transport import CombiningHttpToolsProtocol, ConnectionGuard, guarded
from mlrelease.core.modelcard import ModelCard, Standardization
from tests.serving_helpers import API_KEY
from tests.unit.test_serving_fastpath_protocol import OK, Answers, Later, Transport, predict, slow_app, until

PATH = "/v1/models/m:predict"
BODY = b'{"instances": [[1.0, 2.0]]}'
JSON_TYPE = (b"content-type", b"application/json")


@pytest.fixture(autouse=True)
def _no_serving_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the defaults and the test's arguments only."""
    import os

    for name in [n for n in os.environ if n.startswith("MLRELEASE_")]:
        monkeypatch.delenv(name)


# -- request content -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "code", "named"),
    [
        ([JSON_TYPE, (b"content-encoding", b"gzip")], "unsupported_content_encoding", "gzip"),
        ([JSON_TYPE, (b"content-encoding", b"identity, br")], "unsupported_content_encoding", "br"),
        ([(b"content-type", b"application/json; charset=latin-1")], "unsupported_charset", "latin-1"),
        ([(b"content-type", b'application/json;charset="UTF-16"')], "unsupported_charset", "utf-16"),
        ([(b"content-type", b"application/json; charset=utf8")], "unsupported_charset", "utf8"),
        ([(b"content-type", b"text/plain; charset=utf-8")], "unsupported_media_type", "text/plain"),
    ],
)
def test_an_encoded_body_or_a_foreign_charset_is_a_415_naming_it(
    headers: list[tuple[bytes, bytes]], code: str, named: str
) -> None:
    with pytest.raises(ClientError) as caught:
        check_content_type(headers)
    assert caught.value.status == 415 and caught.value.code == code and named in caught.value.message


@pytest.mark.parametrize(
    "headers",
    [
        [JSON_TYPE],
        [(b"content-type", b"Application/JSON")],
        [(b"content-type", b"application/json; charset=utf-8")],
        [(b"content-type", b'application/json; charset="UTF-8"')],
        [(b"content-type", b"application/json; charset=us-ascii")],
        [JSON_TYPE, (b"content-encoding", b"identity")],
    ],
)
def test_json_as_sent_in_utf_8_or_ascii_is_accepted(headers: list[tuple[bytes, bytes]]) -> None:
    check_content_type(headers)


# -- settings ------------------------------------------------------------------------------------------------------
def test_new_settings_have_their_defaults_and_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServingSettings()
    assert settings.trusted_proxies == "" and settings.protect_metadata is False
    assert (settings.header_timeout_s, settings.max_half_open_per_client) == (10.0, 32)
    assert (settings.max_queue_ms, settings.breaker_failures, settings.breaker_reset_s) == (500.0, 5, 5.0)
    monkeypatch.setenv("MLRELEASE_HEADER_TIMEOUT_S", "2.5")
    monkeypatch.setenv("MLRELEASE_MAX_HALF_OPEN_PER_CLIENT", "4")
    monkeypatch.setenv("MLRELEASE_MAX_QUEUE_MS", "0")
    monkeypatch.setenv("MLRELEASE_BREAKER_FAILURES", "0")
    monkeypatch.setenv("MLRELEASE_BREAKER_RESET_S", "0.5")
    monkeypatch.setenv("MLRELEASE_PROTECT_METADATA", "true")
    read = ServingSettings()
    assert (read.header_timeout_s, read.max_half_open_per_client, read.max_queue_ms) == (2.5, 4, 0.0)
    assert (read.breaker_failures, read.breaker_reset_s, read.protect_metadata) == (0, 0.5, True)
    bad: list[dict[str, Any]] = [
        {"header_timeout_s": 0},
        {"breaker_reset_s": 0},
        {"max_queue_ms": -1},
        {"breaker_failures": -1},
        {"max_half_open_per_client": -1},
    ]
    for values in bad:
        with pytest.raises(ValidationError):
            ServingSettings(**values)


@pytest.mark.parametrize(("trusted", "limited"), [("", True), ("127.0.0.1", False)])
def test_forwarded_for_counts_only_from_a_configured_proxy(trusted: str, limited: bool) -> None:
    """By default the rate limit keys on the connecting address: a client cannot pick its bucket with the header."""
    server = ModelServer(
        ServingSettings(
            model_dir=Path("unused"), rate_limit_per_second=0.01, rate_limit_burst=1, trusted_proxies=trusted
        )
    )
    server._limit([(b"x-forwarded-for", b"203.0.113.1")], "127.0.0.1")
    if limited:
        with pytest.raises(ClientError, match="rate limit"):
            server._limit([(b"x-forwarded-for", b"203.0.113.2")], "127.0.0.1")
    else:
        server._limit([(b"x-forwarded-for", b"203.0.113.2")], "127.0.0.1")


# -- the batcher's admission estimate ------------------------------------------------------------------------------
def test_the_batcher_refuses_what_would_wait_past_the_budget_and_learns_the_batch_time() -> None:
    gate = threading.Event()

    def blocked(batch: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return batch

    async def scenario() -> tuple[list[float], float]:
        batcher = MicroBatcher(blocked, max_rows=4, max_wait_s=0.05, batch_s=0.02)
        seen = [batcher.overloaded()]  # idle: a request runs at once
        futures = [batcher.submit(np.zeros((4, 1), np.float32))]  # running (blocked)
        seen.append(batcher.overloaded())  # the running batch alone: 0.02 s
        futures += [batcher.submit(np.zeros((2, 1), np.float32)) for _ in range(2)]
        seen.append(batcher.overloaded())  # one full batch queued ahead: 2 x 0.02 s
        futures += [batcher.submit(np.zeros((4, 1), np.float32))]
        seen.append(batcher.overloaded())  # two: 3 x 0.02 s, over the budget
        gate.set()
        await asyncio.gather(*futures)
        learned = batcher.batch_s
        await batcher.close()
        return seen, learned

    seen, learned = asyncio.run(scenario())
    assert seen[:3] == [0.0, 0.0, 0.0] and seen[3] == pytest.approx(0.06)
    assert learned != 0.02  # the EWMA moved towards the batches' real duration


def test_a_model_call_stuck_past_the_budget_refuses_new_requests() -> None:
    gate = threading.Event()

    def blocked(batch: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return batch

    async def scenario() -> tuple[float, float]:
        batcher = MicroBatcher(blocked, max_rows=4, max_wait_s=0.05, batch_s=0.001)
        future = batcher.submit(np.zeros((1, 1), np.float32))
        before = batcher.overloaded()
        await asyncio.sleep(0.08)
        stuck = batcher.overloaded()
        gate.set()
        await future
        await batcher.close()
        return before, stuck

    before, stuck = asyncio.run(scenario())
    assert before == 0.0 and stuck >= 0.07


# -- the server: HEAD, metadata protection, shedding, the breaker --------------------------------------------------
def answer(batch: np.ndarray) -> np.ndarray:
    return np.tile(np.array([[0.25, 0.75]], np.float32), (len(batch), 1))


def fake_model(runner: Callable[[np.ndarray], np.ndarray], batch_ms: float) -> LoadedModel:
    card = ModelCard(
        name="m",
        feature_names=["a", "b"],
        input_shape=[-1, 2],
        classes=["x", "y"],
        preprocessing=Standardization(mean=[0.0, 0.0], scale=[1.0, 1.0]),
        sha256="0" * 64,
        torch_version="fake",
    )
    return LoadedModel(card, "1", "test", None, None, runner=runner, batch_ms=batch_ms)


def model_server(
    runner: Callable[[np.ndarray], np.ndarray] = answer, batch_ms: float = 0.0, **settings: Any
) -> ModelServer:
    """A ModelServer serving a numpy stand-in (inline below 0.5 ms per batch, else on the model thread)."""
    config = ServingSettings(model_dir=Path("unused"), **settings)
    server = ModelServer(config)
    server.current = Serving(fake_model(runner, batch_ms), config, server.metrics)
    return server


Reply = tuple[int, dict[bytes, bytes], bytes]


async def call(
    server: ModelServer, method: str, path: str, body: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> Reply:
    """One request through the ASGI application: (status, headers, body sent)."""
    scope = {"type": "http", "method": method, "path": path, "headers": list(headers), "client": ("127.0.0.1", 5)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await server(scope, receive, send)
    start, content = sent
    return start["status"], dict(start["headers"]), content["body"]


async def fast(server: ModelServer, body: bytes, headers: tuple[tuple[bytes, bytes], ...]) -> Reply:
    """The same request through the protocol fast path's entry (ModelServer.fast_call)."""
    outcome: Any = server.fast_call(server.fast_route(PATH.encode()), list(headers), "127.0.0.1", body)  # type: ignore[arg-type]
    if type(outcome) is not tuple:
        done = asyncio.get_running_loop().create_future()
        outcome.attach(lambda: done.set_result(None))
        await done
        outcome = outcome.finish()
    status, content, extra = outcome
    return status, dict(extra), content


async def both(server: ModelServer, body: bytes, headers: tuple[tuple[bytes, bytes], ...]) -> tuple[Reply, Reply]:
    return await call(server, "POST", PATH, body, headers), await fast(server, body, headers)


def agree(asgi: Reply, fast_reply: Reply) -> dict[str, Any]:
    """The two paths' answers match (status, JSON body, Retry-After); the body."""
    assert asgi[0] == fast_reply[0] and json.loads(asgi[2]) == json.loads(fast_reply[2]), (asgi, fast_reply)
    assert asgi[1].get(b"retry-after") == fast_reply[1].get(b"retry-after")
    return dict(json.loads(asgi[2]))


def test_both_paths_refuse_an_encoded_body_and_a_foreign_charset_alike() -> None:
    async def scenario() -> list[dict[str, Any]]:
        server = model_server()
        cases = [
            (JSON_TYPE, (b"content-encoding", b"gzip")),
            ((b"content-type", b"application/json; charset=iso-8859-1"),),
            ((b"content-type", b"application/json; charset=utf-8"),),
        ]
        bodies = [agree(*await both(server, BODY, headers)) for headers in cases]
        await server.current.retire()  # type: ignore[union-attr]
        return bodies

    gzip, latin, utf8 = asyncio.run(scenario())
    assert gzip["status"] == 415 and gzip["code"] == "unsupported_content_encoding" and "gzip" in gzip["error"]
    assert latin["status"] == 415 and "iso-8859-1" in latin["error"]
    assert utf8["predictions"][0]["class"] == "y"


GETS = ["/health", "/ready", "/v2/health/live", "/v2/health/ready", "/openapi.json", "/v1/models/m", "/v2/models/m"]


def test_head_answers_like_get_wherever_get_works() -> None:
    async def scenario() -> list[tuple[Reply, Reply]]:
        server = model_server()
        pairs = [(await call(server, "GET", path), await call(server, "HEAD", path)) for path in GETS]
        pairs.append((await call(server, "POST", "/health"), await call(server, "HEAD", PATH)))
        metrics = await call(server, "HEAD", "/metrics")
        assert metrics[0] == 200 and metrics[1][b"content-type"].startswith(b"text/plain")
        await server.current.retire()  # type: ignore[union-attr]
        return pairs

    pairs = asyncio.run(scenario())
    for (got, head), path in zip(pairs, GETS, strict=False):
        assert got[0] == head[0] == 200 and got[1] == head[1], path  # content-length included
    post_health, head_predict = pairs[-1]
    assert post_health[0] == 405 and post_health[1][b"allow"] == b"GET, HEAD"
    assert head_predict[0] == 405 and head_predict[1][b"allow"] == b"POST"


@pytest.mark.parametrize("protect", [False, True])
def test_metrics_and_openapi_need_the_key_only_when_protected(protect: bool) -> None:
    key = (b"authorization", f"Bearer {API_KEY}".encode())

    async def scenario() -> dict[str, tuple[int, int]]:
        server = model_server(api_key=API_KEY, protect_metadata=protect)
        seen = {}
        for path in ("/metrics", "/openapi.json", "/health", "/ready"):
            seen[path] = ((await call(server, "GET", path))[0], (await call(server, "GET", path, headers=(key,)))[0])
        schema = json.loads((await call(server, "GET", "/openapi.json", headers=(key,)))[2])
        assert ("security" in schema["paths"]["/metrics"]["get"]) is protect
        await server.current.retire()  # type: ignore[union-attr]
        return seen

    seen = asyncio.run(scenario())
    assert seen["/metrics"] == seen["/openapi.json"] == ((401, 200) if protect else (200, 200))
    assert seen["/health"] == seen["/ready"] == (200, 200)


def test_protect_metadata_without_an_api_key_leaves_the_metadata_open() -> None:
    async def scenario() -> int:
        server = model_server(protect_metadata=True)
        status = (await call(server, "GET", "/metrics"))[0]
        await server.current.retire()  # type: ignore[union-attr]
        return status

    assert asyncio.run(scenario()) == 200


def metric(server: ModelServer, name: str) -> float:
    for line in server.metrics.render().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_predictions_that_would_wait_past_the_budget_get_a_503_on_both_paths() -> None:
    """The model thread is held; the second request may queue (one batch ahead of it), the next ones not."""
    gate = threading.Event()

    def blocked(batch: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return answer(batch)

    async def scenario() -> tuple[list[int], dict[str, Any], Reply, float]:
        server = model_server(blocked, batch_ms=40.0, max_queue_ms=50, max_batch_size=1)
        headers = (JSON_TYPE,)
        admitted = [asyncio.ensure_future(fast(server, BODY, headers)) for _ in range(2)]
        await asyncio.sleep(0.01)
        body = agree(*await both(server, BODY, headers))
        refused = await call(server, "POST", PATH, BODY, headers)
        gate.set()
        statuses = [reply[0] for reply in await asyncio.gather(*admitted)]
        shed = metric(server, "mlrelease_shed_total")
        await server.current.retire()  # type: ignore[union-attr]
        return statuses, body, refused, shed

    statuses, body, refused, shed = asyncio.run(scenario())
    assert statuses == [200, 200]
    assert body["status"] == 503 and body["code"] == "overloaded" and "MLRELEASE_MAX_QUEUE_MS" in body["error"]
    assert refused[0] == 503 and int(refused[1][b"retry-after"]) >= 1
    assert shed == 3


def test_the_breaker_opens_after_consecutive_failures_refuses_at_once_and_heals_through_ready() -> None:
    calls: list[int] = []
    broken = [True]

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if broken[0]:
            raise RuntimeError("model fault")
        return answer(batch)

    async def scenario() -> dict[str, Any]:
        server = model_server(flaky, breaker_failures=2, breaker_reset_s=0.1)
        headers = (JSON_TYPE,)
        out: dict[str, Any] = {"failures": [(await call(server, "POST", PATH, BODY, headers))[0] for _ in range(2)]}
        out["calls"] = len(calls)
        out["refusal"] = agree(*await both(server, BODY, headers))
        out["retry_after"] = (await fast(server, BODY, headers))[1][b"retry-after"]
        out["calls_after"] = len(calls)  # no model call while open
        out["ready"] = await call(server, "GET", "/ready")
        out["gauge"] = metric(server, "mlrelease_breaker_open"), metric(server, "mlrelease_breaker_opens_total")
        broken[0] = False
        await asyncio.sleep(0.12)
        out["probing"] = (await call(server, "GET", "/ready"))[0]  # due: /ready sends the probe
        out["healed"] = await until(lambda: server.current is not None and server.current.breaker.closed, 1.0)
        out["after"] = (await call(server, "GET", "/ready"))[0], (await fast(server, BODY, headers))[0]
        out["gauge_after"] = metric(server, "mlrelease_breaker_open")
        await server.current.retire()  # type: ignore[union-attr]
        return out

    out = asyncio.run(scenario())
    assert out["failures"] == [500, 500] and out["calls"] == 2
    refusal = out["refusal"]
    assert refusal["status"] == 503 and refusal["code"] == "circuit_open" and out["calls_after"] == 2
    assert out["retry_after"] == b"1"
    ready = out["ready"]
    assert ready[0] == 503 and b"circuit open" in ready[2] and orjson.loads(ready[2])["failed"] is False
    assert out["gauge"] == (1.0, 1.0)
    assert out["probing"] == 503 and out["healed"] and out["after"] == (200, 200) and out["gauge_after"] == 0.0


def test_nan_outputs_are_the_model_working_not_a_breaker_failure() -> None:
    def overflowing(batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), 2), math.nan, np.float32)

    async def scenario() -> tuple[list[int], bool]:
        server = model_server(overflowing, breaker_failures=1)
        statuses = [(await call(server, "POST", PATH, BODY, (JSON_TYPE,)))[0] for _ in range(3)]
        closed = server.current.breaker.closed  # type: ignore[union-attr]
        await server.current.retire()  # type: ignore[union-attr]
        return statuses, closed

    assert asyncio.run(scenario()) == ([422, 422, 422], True)


# -- the header-read timeout and the per-client cap (protocol level) -----------------------------------------------
class PeerTransport(Transport):
    """The recording transport of test_serving_fastpath_protocol, from a chosen client address."""

    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (self.peer, 5000), "sockname": ("127.0.0.1", 8080)}.get(name, default)


def connect(guard: ConnectionGuard, server: Any = None, peer: str = "127.0.0.1") -> tuple[Any, PeerTransport]:
    """A protocol bound to ``guard`` on a recording transport: the fast path's, or with ``server=None`` the plain
    (ASGI only) one; call inside a loop."""
    http = protocol_for(server, guard) if server is not None else guarded(CombiningHttpToolsProtocol, guard)
    config = uvicorn.Config(slow_app, http=http, timeout_keep_alive=5, lifespan="off")
    config.load()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = PeerTransport(peer)
    protocol.connection_made(transport)
    return protocol, transport


PARTIAL = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: t\r\n"


@pytest.mark.parametrize("fast_path", [True, False])
def test_headers_not_in_within_the_timeout_get_a_408_and_a_close(fast_path: bool) -> None:
    guard = ConnectionGuard(header_timeout=0.3)

    async def scenario() -> tuple[bool, PeerTransport]:
        protocol, transport = connect(guard, Answers(OK) if fast_path else None)
        protocol.data_received(PARTIAL)
        await asyncio.sleep(0.05)
        early = transport.closed
        await until(lambda: transport.closed, 2.0)
        return early, transport

    early, transport = asyncio.run(scenario())
    assert not early and transport.closed and transport.data.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in transport.data and b'"code":"header_timeout"' in transport.data
    assert guard.timeouts == 1 and guard.half_open == {"127.0.0.1": 1}  # (the fake transport reports no loss)


def test_a_silent_connection_is_closed_without_an_answer() -> None:
    guard = ConnectionGuard(header_timeout=0.1)

    async def scenario() -> PeerTransport:
        _, transport = connect(guard, Answers(OK))
        await until(lambda: transport.closed, 1.0)
        return transport

    transport = asyncio.run(scenario())
    assert transport.closed and transport.data == b"" and guard.timeouts == 1


def test_a_later_request_is_timed_from_its_first_byte_and_whole_requests_arm_no_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the first timeout a kept-alive connection still serves; a request whose headers trickle gets 408."""
    monkeypatch.setattr(transport_module, "HALF_OPEN_GRACE_S", 0.02)
    guard = ConnectionGuard(header_timeout=0.3)

    async def scenario() -> tuple[bool, bool, PeerTransport]:
        protocol, transport = connect(guard, Answers(OK))
        protocol.data_received(predict())
        await asyncio.sleep(0.05)  # the connection's one timer fired and found the headers in
        no_timer = protocol._hdr_timer is None
        await asyncio.sleep(0.3)  # past the first request's timeout
        protocol.data_received(predict())  # whole: no timer armed
        no_timer = no_timer and protocol._hdr_timer is None and guard.half_open == {}
        await asyncio.sleep(0.02)
        protocol.data_received(PARTIAL)
        await asyncio.sleep(0.05)
        still_open = not transport.closed
        await until(lambda: transport.closed, 2.0)
        return no_timer, still_open, transport

    no_timer, still_open, transport = asyncio.run(scenario())
    assert no_timer and still_open
    assert transport.data.count(b"HTTP/1.1 200") == 2 and transport.data.count(b"HTTP/1.1 408") == 1


def test_headers_pipelined_behind_an_answer_still_owed_wait_for_it() -> None:
    later = Later(OK)
    guard = ConnectionGuard(header_timeout=0.1)

    async def scenario() -> tuple[bool, PeerTransport]:
        protocol, transport = connect(guard, Answers(later))
        protocol.data_received(predict() + PARTIAL)
        await asyncio.sleep(0.25)
        waited = transport.data == b"" and not transport.closed
        later.ready()
        await until(lambda: transport.closed, 1.0)
        return waited, transport

    waited, transport = asyncio.run(scenario())
    assert waited and transport.data.startswith(b"HTTP/1.1 200")
    assert transport.data.index(b"HTTP/1.1 200") < transport.data.index(b"HTTP/1.1 408")


def test_a_client_with_too_many_half_open_connections_gets_new_ones_closed_at_once() -> None:
    guard = ConnectionGuard(header_timeout=5, max_half_open=2)

    async def scenario() -> list[bool]:
        first, _ = connect(guard, Answers(OK))
        second, _ = connect(guard, Answers(OK))
        first.data_received(PARTIAL)
        second.data_received(PARTIAL)
        _, third = connect(guard, Answers(OK))  # a third from the same address
        _, elsewhere = connect(guard, Answers(OK), peer="192.0.2.7")
        first.data_received(b"Content-Length: 2\r\n\r\n{}")  # its headers are in: one slot free again
        _, fourth = connect(guard, Answers(OK))
        second.connection_lost(None)  # a lost connection frees its slot too
        counted = guard.half_open == {}
        for protocol in (first, second):
            protocol.connection_lost(None)
        return [third.closed, elsewhere.closed, fourth.closed, counted]

    third_closed, elsewhere_closed, fourth_closed, counted = asyncio.run(scenario())
    assert third_closed and not elsewhere_closed and not fourth_closed and counted
    assert guard.refused == 1


def test_silent_connections_count_after_the_grace_and_trusted_proxies_are_exempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of new connections does not count at once (a load generator opens 64 before sending anything)."""
    monkeypatch.setattr(transport_module, "HALF_OPEN_GRACE_S", 0.03)
    guard = ConnectionGuard(header_timeout=5, max_half_open=1, trusted=frozenset({"10.0.0.1"}))

    async def scenario() -> list[bool]:
        burst = [connect(guard, Answers(OK))[1] for _ in range(3)]  # all accepted: none counts yet
        accepted = not any(t.closed for t in burst)
        await asyncio.sleep(0.06)  # the grace is over: one counts, the others are over the cap
        _, late = connect(guard, Answers(OK))
        proxies = [connect(guard, Answers(OK), peer="10.0.0.1")[1] for _ in range(3)]
        await asyncio.sleep(0.06)
        return [accepted, sum(t.closed for t in burst) == 2, late.closed, not any(t.closed for t in proxies)]

    assert asyncio.run(scenario()) == [True, True, True, True]
    assert guard.half_open == {"127.0.0.1": 1} and guard.refused == 3

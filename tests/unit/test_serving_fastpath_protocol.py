"""The fast-path protocol against a recording transport: what reaches the wire, in which order, and when it closes.

A real loopback server cannot hold a request longer than uvicorn's keep-alive timeout on demand, so these drive
the protocol object directly, with uvicorn's own Config and ServerState and a short keep-alive timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from deploy.serving.fastpath import FastPathProtocol, protocol_for

ERROR = (415, b'{"code":"unsupported_media_type"}', [(b"content-type", b"application/json")])


class Transport(asyncio.Transport):
    """Records writes; closing is remembered, reading can be paused."""

    def __init__(self) -> None:
        super().__init__()
        self.data = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.data += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        """Flow control: nothing to pause here."""

    def resume_reading(self) -> None:
        """Flow control: nothing to resume here."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8080)}.get(name, default)


class Answers:
    """A fast server: every prediction gets ``outcome`` (a Response, or an exception to raise)."""

    max_body_bytes = 1000

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.recorded: list[int] = []

    def fast_route(self, path: bytes) -> str | None:
        return "predict" if path.endswith(b":predict") else None

    def fast_call(self, route: Any, headers: Any, peer: str | None, body: bytes) -> Any:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def fast_record(self, route: Any, status: int, seconds: float) -> None:
        self.recorded.append(status)


STARTED: list[str] = []


async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI side: answers after 0.3 s, longer than the test's keep-alive timeout; ``/body`` reads its body
    first (which resumes reading), ``/early`` answers at once without reading it (as a 415 would), ``/echo``
    starts its answer, then waits for the body. Every path it starts on is recorded in ``STARTED``."""
    STARTED.append(scope["path"])
    if scope["path"] == "/echo":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await receive()
        await send({"type": "http.response.body", "body": b"echo"})
        return
    if scope["path"] == "/early":
        await send({"type": "http.response.start", "status": 415, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"early"})
        return
    if scope["path"] == "/body":
        await receive()
    await asyncio.sleep(0.3)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    await send({"type": "http.response.body", "body": b"slow"})


def predict(body: bytes = b"{}") -> bytes:
    return b"POST /v1/models/m:predict HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class Later:
    """A Pending answer the test completes by hand (what the micro-batch does for ModelServer's Batched)."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.ready: Any = None

    def attach(self, ready: Any) -> None:
        self.ready = ready

    def finish(self) -> Any:
        if isinstance(self.response, BaseException):
            raise self.response
        return self.response


def connect(server: Answers, keep_alive: float = 0.1) -> tuple[FastPathProtocol, Transport]:
    """A fast-path protocol on a recording transport, with a short keep-alive timeout (call inside a loop)."""
    config = uvicorn.Config(slow_app, http=protocol_for(server), timeout_keep_alive=keep_alive, lifespan="off")
    config.load()
    protocol_class: type[FastPathProtocol] = config.http_protocol_class  # type: ignore[assignment]
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def drive(server: Answers, *reads: bytes, seconds: float = 0.6) -> Transport:
    """Feed each of ``reads`` as one read to a fresh connection, letting the loop run ``seconds`` after each."""
    protocol, transport = connect(server)
    for data in reads:
        protocol.data_received(data)
        await asyncio.sleep(seconds)
    return transport


def test_a_pipelined_request_behind_a_fast_error_is_not_cut_by_the_keep_alive_timer() -> None:
    server = Answers(ERROR)
    transport = asyncio.run(drive(server, predict() + b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"))
    first = transport.data.find(b"HTTP/1.1 415")
    second = transport.data.find(b"HTTP/1.1 200")
    assert 0 <= first < second, transport.data
    assert transport.data.endswith(b"slow") and server.recorded == [415]


def test_a_failing_fast_call_is_a_500_and_the_connection_keeps_serving() -> None:
    server = Answers(RuntimeError("bug"))
    transport = asyncio.run(drive(server, predict(), predict(), seconds=0.05))
    assert transport.data.count(b"HTTP/1.1 500") == 2 and not transport.closed
    assert server.recorded == [500, 500]


def test_connection_close_is_honoured_after_a_fast_answer() -> None:
    server = Answers((200, b"{}", [(b"content-type", b"application/json")]))
    request = predict().replace(b"Host: t\r\n", b"Host: t\r\nConnection: close\r\n")
    transport = asyncio.run(drive(server, request, seconds=0.05))
    assert transport.data.startswith(b"HTTP/1.1 200") and b"connection: close" in transport.data
    assert transport.closed


def test_a_pending_answer_is_written_when_its_batch_delivers_and_the_connection_waits_for_it() -> None:
    """No answer before delivery, even past the keep-alive timeout; then one answer, and the connection lives."""
    later = Later((200, b'{"predictions":[]}', [(b"content-type", b"application/json")]))
    server = Answers(later)

    async def scenario() -> tuple[bytes, bool, bytes, bool]:
        protocol, transport = connect(server)
        protocol.data_received(predict())
        await asyncio.sleep(0.3)  # three keep-alive timeouts: a request in flight must not be cut
        before, closed_before = transport.data, transport.closed
        later.ready()
        await asyncio.sleep(0.02)
        return before, closed_before, transport.data, transport.closed

    before, closed_before, after, closed_after = asyncio.run(scenario())
    assert before == b"" and not closed_before
    assert after.startswith(b"HTTP/1.1 200") and after.endswith(b'{"predictions":[]}') and after.count(b"HTTP/1.1") == 1
    assert server.recorded == [200]


def test_a_pending_answer_that_fails_to_build_is_a_500_and_the_connection_keeps_serving() -> None:
    later = Later(RuntimeError("answer bug"))
    server = Answers(later)

    async def scenario() -> Transport:
        protocol, transport = connect(server)
        protocol.data_received(predict())
        await asyncio.sleep(0.01)
        later.ready()
        await asyncio.sleep(0.01)
        server.outcome = ERROR
        protocol.data_received(predict())
        await asyncio.sleep(0.05)
        return transport

    transport = asyncio.run(scenario())
    assert transport.data.startswith(b"HTTP/1.1 500") and b"HTTP/1.1 415" in transport.data
    assert not transport.closed and server.recorded == [500, 415]


OK = (200, b"{}", [(b"content-type", b"application/json")])


async def until(condition: Any, limit: float = 3.0) -> bool:
    """Let the loop run until ``condition()`` holds (True) or ``limit`` seconds pass (False)."""
    for _ in range(int(limit / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return bool(condition())


def test_a_connection_in_use_outlives_the_keep_alive_timeout_and_closes_once_idle_that_long() -> None:
    """One keep-alive timer per connection (not one per response): requests 0.05 s apart for 0.6 s (two 0.3-s
    timeouts) keep the connection; left idle, it closes, and not before it has been idle for a good part of the
    timeout."""
    server = Answers(OK)

    async def scenario() -> tuple[bool, bool, bool]:
        protocol, transport = connect(server, keep_alive=0.3)
        for _ in range(12):
            protocol.data_received(predict())
            await asyncio.sleep(0.05)
        open_while_used = not transport.closed
        await asyncio.sleep(0.05)
        open_soon_after = not transport.closed  # idle 0.1 s of 0.3
        return open_while_used, open_soon_after, await until(lambda: transport.closed)

    used, soon_after, closed = asyncio.run(scenario())
    assert used and soon_after and closed
    assert server.recorded == [200] * 12


def test_a_request_partly_received_when_the_timer_fires_is_not_cut() -> None:
    """Part of the next request in (its request line), past the timeout: the connection waits for the rest, as
    uvicorn's does (the data cancels its timer)."""
    server = Answers(OK)

    async def scenario() -> tuple[bool, Transport]:
        protocol, transport = connect(server)
        protocol.data_received(predict())
        await asyncio.sleep(0.02)
        request = predict(b"{}")
        protocol.data_received(request[:20])
        await asyncio.sleep(0.4)  # four timeouts
        still_open = not transport.closed
        protocol.data_received(request[20:])
        await until(lambda: transport.data.count(b"HTTP/1.1 200") == 2)
        return still_open, transport

    still_open, transport = asyncio.run(scenario())
    assert still_open and transport.data.count(b"HTTP/1.1 200") == 2


def test_an_asgi_request_longer_than_the_timeout_is_answered_and_the_idle_connection_then_closes() -> None:
    """slow_app answers after 0.3 s, three timeouts: the request is not cut, and the connection closes once idle."""
    server = Answers(OK)

    async def scenario() -> tuple[bool, bool, bool]:
        protocol, transport = connect(server)
        protocol.data_received(predict())
        await asyncio.sleep(0.02)
        protocol.data_received(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        answered = await until(lambda: transport.data.endswith(b"slow"))
        open_at_answer = not transport.closed
        return answered, open_at_answer, await until(lambda: transport.closed)

    answered, open_at_answer, closed = asyncio.run(scenario())
    assert answered and open_at_answer and closed


def test_a_broken_chunked_body_is_refused_at_once_not_held_behind_itself() -> None:
    """The bad bytes are inside the request in flight, which can never complete: the 400 goes now and the
    connection closes (holding it for that request would leave the connection and its task waiting forever)."""
    server = Answers(OK)

    async def scenario() -> tuple[bool, Transport]:
        protocol, transport = connect(server, keep_alive=5)
        protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        return await until(lambda: transport.closed, limit=1.0), transport

    closed, transport = asyncio.run(scenario())
    assert closed and transport.data.startswith(b"HTTP/1.1 400") and b'"malformed_http"' in transport.data


BROKEN_CHUNKED = b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"


def test_a_broken_chunked_request_queued_behind_an_asgi_request_is_answered_400_after_it() -> None:
    """The broken request leaves uvicorn's queue (it can never complete) and the 400 is its answer, written once
    the request in front of it has its own; before, the 400 went at once and that answer was lost."""
    server = Answers(OK)

    async def scenario() -> tuple[bool, Transport]:
        protocol, transport = connect(server, keep_alive=5)
        protocol.data_received(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" + BROKEN_CHUNKED)  # slow_app: 0.3 s
        await asyncio.sleep(0.05)
        assert transport.data == b"" and not protocol.pipeline
        return await until(lambda: transport.closed), transport

    closed, transport = asyncio.run(scenario())
    assert closed and transport.data.count(b"\r\n\r\n") == 2 and b"slow" in transport.data
    assert transport.data.index(b"slow") < transport.data.index(b"HTTP/1.1 400")
    assert transport.data.endswith(b'"status":400}')


def test_a_broken_chunked_request_behind_a_fast_prediction_and_an_asgi_request_is_answered_last() -> None:
    """A prediction waiting for its batch, then a request through ASGI, then a broken one, all queued in one read:
    the prediction's answer, the ASGI answer, the 400, then the connection closes (the broken request, newest in
    uvicorn's queue, is the one that leaves it)."""
    later = Later(OK)
    server = Answers(later)
    STARTED.clear()

    async def scenario() -> tuple[bool, Transport]:
        protocol, transport = connect(server, keep_alive=5)
        protocol.data_received(predict() + b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" + BROKEN_CHUNKED)
        await asyncio.sleep(0.02)
        held = transport.data == b"" and not transport.closed
        later.ready()
        return held and await until(lambda: transport.closed), transport

    held_then_closed, transport = asyncio.run(scenario())
    assert held_then_closed and server.recorded == [200] and transport.data.count(b"\r\n\r\n") == 3
    assert transport.data.startswith(b"HTTP/1.1 200") and transport.data.endswith(b'"status":400}')
    assert transport.data.index(b"{}") < transport.data.index(b"slow") < transport.data.index(b"HTTP/1.1 400")
    assert STARTED == ["/slow"]  # the broken request never reached the application


def test_a_request_cut_short_by_a_half_close_behind_one_in_flight_costs_that_one_nothing() -> None:
    """A request that reads its body (resuming reading), a truncated one queued behind it, then the client's EOF:
    the first is answered and the connection closes; the truncated one gets nothing (it ended as a disconnect)."""
    server = Answers(OK)
    truncated = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc"

    async def scenario() -> tuple[bool | None, bool, Transport, int]:
        protocol, transport = connect(server, keep_alive=5)
        protocol.data_received(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}" + truncated)
        await asyncio.sleep(0.02)
        kept_open = protocol.eof_received()
        closed = await until(lambda: transport.closed)
        return kept_open, closed, transport, protocol.server_state.total_requests

    kept_open, closed, transport, counted = asyncio.run(scenario())
    assert kept_open is True and closed and transport.data.startswith(b"HTTP/1.1 200")
    assert transport.data.endswith(b"slow") and transport.data.count(b"HTTP/1.1 ") == 1
    assert counted == 1  # the answer written is counted, as uvicorn counts responses


def test_a_half_close_while_a_refusal_is_held_still_gets_the_answers_then_the_400() -> None:
    """A prediction, an ASGI request and garbage in one read, then the client's EOF (reading resumes between the
    answers): both answers, then the JSON 400, then the close."""
    later = Later(OK)
    server = Answers(later)

    async def scenario() -> tuple[bool | None, Transport]:
        protocol, transport = connect(server, keep_alive=5)
        protocol.data_received(predict() + b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n\x00\x01 not HTTP\r\n\r\n")
        kept_open = protocol.eof_received()
        later.ready()
        await until(lambda: transport.closed)
        return kept_open, transport

    kept_open, transport = asyncio.run(scenario())
    assert kept_open is True and transport.closed and transport.data.count(b"\r\n\r\n") == 3
    assert transport.data.index(b"slow") < transport.data.index(b"HTTP/1.1 400")
    assert transport.data.endswith(b'"status":400}')


@pytest.mark.parametrize(
    ("framing", "then", "refused"),
    [
        ("Transfer-Encoding: chunked", b"zz\r\n", False),  # its own body broken: no second answer
        ("Content-Length: 2", b"{}\x00\x01 not HTTP\r\n\r\n", True),  # its body whole, then garbage: the 400
    ],
)
def test_bytes_after_a_request_answered_before_its_body_was_read(framing: str, then: bytes, refused: bool) -> None:
    """Answered (415) before its body was read. A body that turns out broken closes the connection with no 400,
    which the client would take for the answer to a request it never sent; garbage after a whole body is a new
    request's, refused with the JSON 400 like any other (not taken for the rest of that body)."""
    server = Answers(OK)

    async def scenario() -> Transport:
        protocol, transport = connect(server, keep_alive=5)
        protocol.data_received(b"POST /early HTTP/1.1\r\nHost: t\r\n%s\r\n\r\n" % framing.encode())
        await until(lambda: transport.data.endswith(b"early"))
        protocol.data_received(then)
        return transport

    transport = asyncio.run(scenario())
    assert transport.closed and transport.data.startswith(b"HTTP/1.1 415")
    assert transport.data.endswith(b'"status":400}' if refused else b"early")


def test_a_connection_whose_answer_came_before_its_body_still_closes_once_idle() -> None:
    """Answered (415) before its body was read, the body arriving after the keep-alive timer looked (and found the
    message in progress): once the body is in and the client is idle, the connection closes, as any idle one."""
    server = Answers(OK)

    async def scenario() -> bool:
        protocol, transport = connect(server, keep_alive=0.1)
        protocol.data_received(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n")
        await until(lambda: transport.data.endswith(b"early"))
        await asyncio.sleep(0.25)  # the timer fired while the body was still owed
        protocol.data_received(b"{}")
        return await until(lambda: transport.closed, limit=1.0)

    assert asyncio.run(scenario())


def test_a_broken_body_under_an_answer_that_waits_for_it_closes_the_connection_in_bounded_time() -> None:
    """An application that started its answer and waits for the body, which turns out broken: no 400 inside that
    answer, and the connection does not stay open waiting for a body that cannot come (closed by the keep-alive
    timeout at the latest)."""
    server = Answers(OK)

    async def scenario() -> tuple[bool, Transport]:
        protocol, transport = connect(server, keep_alive=0.1)
        protocol.data_received(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        await asyncio.sleep(0.02)
        protocol.data_received(b"zz\r\n")
        return await until(lambda: transport.closed, limit=1.0), transport

    closed, transport = asyncio.run(scenario())
    assert closed and transport.data.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 400" not in transport.data


def test_nothing_after_a_refused_upgrade_is_served_while_the_requests_before_it_are_answered() -> None:
    """A request ahead of the upgrade is answered, then the 400; a request sent after the upgrade is never read."""
    server = Answers(OK)
    upgrade = b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"

    async def scenario() -> tuple[bool, Transport]:
        protocol, transport = connect(server, keep_alive=5)
        protocol.data_received(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" + upgrade)  # slow_app: 0.3 s
        await asyncio.sleep(0.05)
        protocol.data_received(predict())
        return await until(lambda: transport.closed), transport

    closed, transport = asyncio.run(scenario())
    assert closed and transport.data.count(b"HTTP/1.1 200") == 1 and transport.data.endswith(b'"status":400}')
    assert b"slow" in transport.data and server.recorded == []  # the prediction after the upgrade never ran

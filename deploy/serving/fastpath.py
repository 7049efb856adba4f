"""Prediction requests answered by the HTTP protocol itself, without an ASGI task per request.

uvicorn runs every request as an asyncio task that awaits ``receive`` and ``send``: five or six loop callbacks
and a dozen objects per request. On this 2-core machine that machinery, not the model, set the tail latency
(a bare ASGI app answering a constant had a p99 of 10-20 ms at a tenth of its peak, where a plain protocol
answered in under 1 ms). So the two prediction routes take a shorter way: the protocol collects the body
and hands it to the server's ``fast_call``, whose answer is written when the micro-batch completes.

Only plain requests take it: POST to a prediction path without query string or escapes, a Content-Length
within the body limit, no ``Expect: 100-continue``, no upgrade, no request still in flight on the
connection. Anything else (and every other route) goes through the ASGI app unchanged, so both ways give the
same checks, the same errors and the same answers (tests/integration/test_serving_fastpath.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import orjson

from deploy.serving.transport import (
    CombiningHttpToolsProtocol,
    CombiningTransport,
    ConnectionGuard,
    Headers,
    response_head,
)

log = logging.getLogger(__name__)

Response = tuple[int, bytes, Headers]
INTERNAL_ERROR: Response = (
    500,
    orjson.dumps({"error": "internal server error", "code": "internal", "status": 500}),
    [(b"content-type", b"application/json")],
)


class Pending(Protocol):
    """An answer that is computed later: ``attach`` names the callback to run when it is ready, ``finish()``
    then builds it. The callback runs straight from the batch's completion, so the answer leaves in the same
    loop step as the batch (a future's done-callback would wait for the next one)."""

    def attach(self, ready: Callable[[], None]) -> None: ...

    def finish(self) -> Response: ...


class FastServer(Protocol):
    """What the protocol needs from the application (ModelServer, or the bare benchmark server)."""

    @property
    def max_body_bytes(self) -> int:
        """Bodies above this go through ASGI, which answers 413."""

    def fast_route(self, path: bytes) -> Any | None:
        """A route token for a prediction path, or None to leave the request to ASGI."""

    def fast_call(self, route: Any, headers: Headers, peer: str | None, body: bytes) -> Response | Pending:
        """Checks, parse and submit; a Response at once (errors) or a Pending answer."""

    def fast_record(self, route: Any, status: int, seconds: float) -> None:
        """Count the request in the server's metrics."""


class _NoEvent:
    def set(self) -> None:
        """uvicorn wakes a request's ASGI task on disconnect; a fast request has none."""


class FastCycle:
    """Stands in for uvicorn's RequestResponseCycle while a fast request is in flight.

    uvicorn reads these attributes: a pipelined request waits while ``response_complete`` is False, a
    graceful shutdown clears ``keep_alive``, a lost connection sets ``disconnected``.
    """

    __slots__ = ("disconnected", "keep_alive", "message_event", "response_complete")

    def __init__(self, keep_alive: bool) -> None:
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.message_event = _NoEvent()


class _Request:
    __slots__ = ("chunks", "cycle", "route", "start")

    def __init__(self, route: Any, keep_alive: bool) -> None:
        self.route = route
        self.cycle = FastCycle(keep_alive)
        self.chunks: list[bytes] = []
        self.start = time.perf_counter()  # like the ASGI path, latency includes the body's upload


class FastPathProtocol(CombiningHttpToolsProtocol):
    """uvicorn's httptools protocol that answers prediction requests itself (see the module docstring).

    Two more of uvicorn's per-request costs are left out. The ASGI scope is built only for a request that goes
    through ASGI. And the keep-alive timeout has one timer per connection, not one armed after every response
    and cancelled by the next request (a timer handle, a heap push and a cancellation per request): the timer
    checks, when it fires, whether the connection has really been idle that long, and waits for the rest if not.
    """

    fast_server: ClassVar[FastServer]
    transport: CombiningTransport  # type: ignore[assignment]  # connection_made wraps the socket's transport
    _fast: _Request | None = None  # the fast request being parsed on this connection
    _in_message = False  # a request has begun and is not yet complete
    _idle_since = 0.0  # loop time of the last completed response
    _idle_timer: asyncio.TimerHandle | None = None

    def on_message_begin(self) -> None:
        self._in_message = True
        self._hdr_partial = True
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        request = self._fast_candidate()
        if request is None:
            self._build_scope()
            super().on_headers_complete()
            return
        self._hdr_partial = False  # (CombiningHttpToolsProtocol.on_headers_complete's header bookkeeping)
        if self._hdr_slow:
            self._slow_headers_done()
        self._fast = request
        self.cycle = request.cycle  # type: ignore[assignment]  # uvicorn only reads the attributes above

    def _build_scope(self) -> None:
        """uvicorn's scope for a request that goes through ASGI (its on_message_begin builds it; url and headers,
        already parsed, are kept)."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    def _fast_candidate(self) -> _Request | None:
        """A fast request when this one qualifies; None sends it through ASGI."""
        if self.parser.get_method() != b"POST" or self.expect_100_continue or self.flow.write_paused:
            return None  # (a client that does not read its answers gets ASGI's wait for the socket to drain)
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind a request in flight: uvicorn's queue keeps the order
        url = self.url
        if 63 in url or 37 in url or 35 in url or not url.isascii():  # ? % # (an int is a memchr, b"?" is not)
            return None
        route = self.fast_server.fast_route(url)
        if route is None:
            return None
        length = b""
        connection = False
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name == b"connection" or name == b"proxy-connection":  # llhttp reads both for keep-alive
                connection = True
            elif name in (b"transfer-encoding", b"upgrade"):
                return None
        if not length.isdigit() or int(length) > self.fast_server.max_body_bytes:
            return None  # no length, or too large: the ASGI path names the problem (413)
        # uvicorn closes every HTTP/1.0 connection; one without a (Proxy-)Connection header is not kept alive
        # anyway, so the version (a string built per call) is only asked for when a header could say keep-alive
        keep_alive = self.parser.should_keep_alive() and not (connection and self.parser.get_http_version() == "1.0")
        return _Request(route, keep_alive)

    def on_body(self, body: bytes) -> None:
        if self._fast is not None:
            self._fast.chunks.append(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        request = self._fast
        if request is None:
            super().on_message_complete()
            return
        self._fast = None
        chunks = request.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        peer = self.client[0] if self.client else None
        try:
            outcome = self.fast_server.fast_call(request.route, self.headers, peer, body)
        except Exception:  # never into httptools: it would turn into a 400 and a closed connection
            log.exception("internal error on the prediction fast path")
            outcome = INTERNAL_ERROR
        if type(outcome) is tuple:
            # Answer on the next loop step, not inside the parser: a request pipelined in the same read then
            # queues behind this one, and the keep-alive timer is armed only once nothing is in flight.
            self.loop.call_soon(self._answer, request, outcome)
        else:
            pending: Pending = outcome  # type: ignore[assignment]
            pending.attach(_when_done(self, request, pending))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        request = self._fast
        if request is not None:  # gone before its body was in: counted as the ASGI path counts it (499)
            self._fast = None  # (uvicorn's connection_lost marks its cycle, self.cycle, disconnected)
            self.fast_server.fast_record(request.route, 499, time.perf_counter() - request.start)
        super().connection_lost(exc)

    def request_complete(self) -> bool:
        if isinstance(self.cycle, FastCycle):
            return self._fast is None  # on_message_complete handed it on; until then the body is still arriving
        return super().request_complete()

    def on_response_complete(self) -> None:
        """uvicorn's, with the connection's one keep-alive timer (see the class docstring)."""
        if self.refusal_due():
            return
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _idle_check(self) -> None:
        """Close the connection if nothing happened on it for the keep-alive timeout, else look again later."""
        self._idle_timer = None
        if self.transport.is_closing():
            return
        busy = self._in_message or (self.cycle is not None and not self.cycle.response_complete)
        if busy:  # its response re-arms the timer
            return
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self._idle_timer = self.loop.call_later(left, self._idle_check)
        else:
            self.timeout_keep_alive_handler()

    def _answer(self, request: _Request, response: Response) -> None:
        """Write the response (one write), finish the request the way uvicorn does, count it."""
        cycle = request.cycle
        cycle.response_complete = True
        status, body, headers = response
        seconds = time.perf_counter() - request.start
        if cycle.disconnected or self.transport.is_closing():
            self.fast_server.fast_record(request.route, 499, seconds)
            return
        keep_alive = cycle.keep_alive
        head = response_head(self.server_state.default_headers, status, headers)
        close = b"" if keep_alive else b"connection: close\r\n"
        self.transport.write_now(b"%scontent-length: %d\r\n%s\r\n%s" % (head, len(body), close, body))
        self.fast_server.fast_record(request.route, status, seconds)
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()


def _when_done(protocol: FastPathProtocol, request: _Request, pending: Pending) -> Callable[[], None]:
    def done() -> None:
        try:
            response = pending.finish()
        except BaseException:  # a cancelled batch included: the client gets an answer, the connection lives
            log.exception("internal error on the prediction fast path")
            response = INTERNAL_ERROR
        protocol._answer(request, response)

    return done


def protocol_for(server: FastServer, guard: ConnectionGuard | None = None) -> type[FastPathProtocol]:
    """A protocol class bound to ``server`` and the connection limits of ``guard`` (default ones if None):
    uvicorn.Config(http=...) takes a class, not an instance."""
    bound = {"fast_server": server, "guard": guard or ConnectionGuard()}
    return type("BoundFastPathProtocol", (FastPathProtocol,), bound)

"""Write combining for uvicorn's httptools protocol: a response's header and body leave in one send().

uvicorn writes the status line and headers, then the body, as two socket writes; on loopback each write is a
syscall that also wakes the client. Writes made during one event-loop step are joined and sent together
at the start of the next, which halves the syscalls and wake-ups per response. Used by the model server
and, so the comparison stays fair, by the bare benchmark server.

The protocol also guards against clients that hold connections without finishing a request's headers (slowloris):
a header-read timeout, and a cap on such connections per client address (:class:`ConnectionGuard`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

Headers = list[tuple[bytes, bytes]]
_JSON: Headers = [(b"content-type", b"application/json")]
UPGRADE_REFUSED = (
    "this server speaks plain HTTP/1.1 and switches to no other protocol (a request with Upgrade, e.g. WebSocket or "
    "h2c from `curl --http2`, or CONNECT): send it without the Upgrade header (curl: --http1.1)"
)


_HEADS: dict[tuple[int, tuple[tuple[bytes, bytes], ...]], bytes] = {}
_HEADS_FOR: list[Headers] = []  # the default headers (uvicorn's date header, a new list each second) _HEADS holds


def response_head(defaults: Headers, status: int, headers: Headers) -> bytes:
    """Status line, the server's default headers and the response's own, up to content-length: cached, since
    they change once a second (the date) and the responses' headers are a handful of constants."""
    if not _HEADS_FOR or _HEADS_FOR[0] is not defaults:
        _HEADS.clear()
        _HEADS_FOR[:] = [defaults]
    key = (status, tuple(headers))
    head = _HEADS.get(key)
    if head is None:
        if len(_HEADS) >= 64:  # headers built per request (an error's, say) must not grow the cache
            _HEADS.clear()
        out = [STATUS_LINE[status]]
        for name, value in (*defaults, *headers):
            out += [name, b": ", value, b"\r\n"]
        head = _HEADS[key] = b"".join(out)
    return head


class CombiningTransport:
    """Proxy of an asyncio transport whose ``write`` is buffered until the loop's next step (or a close)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def write_now(self, data: bytes) -> None:
        """Send ``data`` at once, after anything buffered (a response that is already one buffer gains nothing
        from waiting for the next loop step)."""
        self.flush()
        if not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send everything buffered as one write (a no-op when nothing is pending or the socket is closing)."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def is_closing(self) -> bool:
        """Asked once or twice per response: a method, not the __getattr__ fallback."""
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(chunk) for chunk in self._pending)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


CLOSE_ONLY = ("", "")  # held in place of a refusal where no answer is owed: the connection just closes
HALF_OPEN_GRACE_S = 1.0  # a connection silent this long after opening counts against its client's cap


@dataclass(slots=True, eq=False)
class ConnectionGuard:
    """Limits one server's connections share, with what /metrics reports about them.

    ``header_timeout``: seconds a request's headers may take, from the connection's opening (first request) or the
    request's first byte (later ones). ``max_half_open``: connections one client address may hold with headers
    incomplete (0: no cap; ``trusted`` proxies, which speak for many clients, are exempt). A connection counts once
    its headers span reads, or once it has been silent for HALF_OPEN_GRACE_S since opening: a burst of new
    connections (a load generator's, a proxy's) sends whole requests within that and never counts.
    """

    header_timeout: float = 10.0
    max_half_open: int = 32
    trusted: frozenset[str] = frozenset()
    half_open: dict[str, int] = field(default_factory=dict)  # client address -> connections counted now
    timeouts: int = 0
    refused: int = 0


P = TypeVar("P", bound="CombiningHttpToolsProtocol")


def guarded(protocol: type[P], guard: ConnectionGuard) -> type[P]:
    """``protocol`` bound to ``guard``'s limits (uvicorn.Config(http=...) takes a class, not an instance)."""
    return type(protocol.__name__, (protocol,), {"guard": guard})


class CombiningHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`CombiningTransport` (pass as ``uvicorn.Config(http=...)``).

    A request that asks to switch protocols is refused with a JSON 400 before any application code sees it: the
    parser stops reading at the upgrade, so serving it as HTTP would lose its body (a valid prediction answered
    "empty body"), and a WebSocket scope the application does not handle answered 500 or hung. Malformed HTTP
    gets the same JSON error shape as every other client mistake, not uvicorn's plain text.

    Request headers are timed (``guard``, see :class:`ConnectionGuard`) with one timer per connection, armed when
    it opens and again only for a later request whose headers span reads: a request that arrives whole costs a
    flag or two, no timer and no clock read.
    """

    guard: ClassVar[ConnectionGuard] = ConnectionGuard()
    _peer: str | None = None  # the client address counted against the cap (None: unknown, trusted, or no cap)
    _hdr_deadline = 0.0  # loop time by which the headers being read must be complete
    _hdr_partial = False  # a request has begun and its headers are not complete (before the first: self.cycle None)
    _hdr_slow = False  # the connection counts as half-open (against its client's cap, when _peer is set)
    _hdr_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CombiningTransport(transport, self.loop))  # type: ignore[arg-type]
        guard = self.guard
        peer = self.client[0] if self.client else None
        if peer is not None and guard.max_half_open and peer not in guard.trusted:
            if guard.half_open.get(peer, 0) >= guard.max_half_open:
                guard.refused += 1
                self.transport.close()
                return
            self._peer = peer
        self._hdr_deadline = self.loop.time() + guard.header_timeout
        self._hdr_timer = self.loop.call_later(min(HALF_OPEN_GRACE_S, guard.header_timeout), self._header_check)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hdr_timer is not None:
            self._hdr_timer.cancel()
            self._hdr_timer = None
        if self._hdr_slow:
            self._hdr_slow = False
            self._uncount()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._refusal is not None:
            return  # refused: nothing after the bad bytes is parsed (after an upgrade, httptools would go on)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.refuse("malformed_http", f"malformed HTTP/1.1 request ({exc}); the connection is closed")
        except httptools.HttpParserUpgrade:
            self.refuse("upgrade_not_supported", UPGRADE_REFUSED)
        else:
            if self._hdr_partial and not self._hdr_slow:
                self._headers_slow()

    # -- the header-read timeout and the per-client cap ------------------------------------------------------
    def on_message_begin(self) -> None:
        self._hdr_partial = True
        super().on_message_begin()

    def _slow_headers_done(self) -> None:
        """The headers of a request counted as half-open are in: it no longer counts (called only then, so a
        request that arrives whole costs a flag, not a call)."""
        self._hdr_slow = False
        self._uncount()

    def _headers_slow(self) -> None:
        """This request's headers span reads: count the connection against its client's cap and time them (a later
        request from about its first byte, this read's; the first from the connection's opening)."""
        self._hdr_slow = True
        if self.cycle is not None:
            self._hdr_deadline = self.loop.time() + self.guard.header_timeout
        if self._hdr_timer is None:
            self._hdr_timer = self.loop.call_at(self._hdr_deadline, self._header_check)
        self._count()

    def _count(self) -> None:
        """One more half-open connection for this client; over the cap, this one is closed instead."""
        peer = self._peer
        if peer is None:
            return
        guard = self.guard
        held = guard.half_open.get(peer, 0)
        if held >= guard.max_half_open:
            guard.refused += 1
            self._hdr_slow = False  # not counted: nothing to take back when it is lost
            self.transport.close()
            return
        guard.half_open[peer] = held + 1

    def _uncount(self) -> None:
        peer = self._peer
        if peer is None:
            return
        half_open = self.guard.half_open
        held = half_open.get(peer, 0) - 1
        if held > 0:
            half_open[peer] = held
        else:
            half_open.pop(peer, None)

    def _header_check(self) -> None:
        """The header timer: a connection silent since it opened counts once the grace is over; headers overdue
        close the connection (after the answer owed to a request in front of them); else look again at the
        deadline."""
        self._hdr_timer = None
        reading = self._hdr_partial or self.cycle is None  # a request's headers, or the first request's yet
        if not reading or self._refusal is not None or self.transport.is_closing():
            return
        if not self._hdr_slow:
            self._hdr_slow = True
            self._count()
            if self.transport.is_closing():
                return
        now = self.loop.time()
        if now < self._hdr_deadline:
            self._hdr_timer = self.loop.call_at(self._hdr_deadline, self._header_check)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # pipelined behind a request still being answered
            self._hdr_deadline = now + self.guard.header_timeout
            self._hdr_timer = self.loop.call_at(self._hdr_deadline, self._header_check)
            return
        self.guard.timeouts += 1
        if not self._hdr_partial:  # nothing sent since the connection opened: no request to answer
            self.transport.close()
            return
        message = (
            f"the request headers did not arrive within {self.guard.header_timeout:g} s "
            "(MLRELEASE_HEADER_TIMEOUT_S); the connection is closed"
        )
        self._write_error(408, "header_timeout", message)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio keeps the socket open on True
        """A client that half-closes once its request is sent (shutdown(SHUT_WR), `nc -N`) still gets the answer:
        the write side stays open while one is owed, and the connection closes after it (after a held refusal,
        the answers owed and then the 400). A request cut short by the half-close can never complete: queued
        behind requests in flight, it leaves the queue and they are answered first; else it ends as a disconnect."""
        if self._refusal is not None:
            return True
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return None
        if self.request_complete():
            cycle.keep_alive = False
            return True
        if self._queued(cycle):
            self.pipeline.popleft()
            self._hold(CLOSE_ONLY)
            return True
        return None

    def request_complete(self) -> bool:
        """Whether the request in flight has been read to its end (its body is complete)."""
        return getattr(self.cycle, "more_body", True) is False

    def send_400_response(self, msg: str) -> None:
        self.refuse("malformed_http", msg)

    _refusal: tuple[str, str] | None = None  # a refusal held until the requests before it are answered

    def refuse(self, code: str, message: str) -> None:
        """A JSON 400 and a closed connection: nothing after a request the parser cannot frame can be trusted.

        Requests read whole before the bad bytes (a valid one pipelined in front of them, say) are answered first:
        the refusal is held until the last of them has its response (nothing read meanwhile is parsed). When the
        bad bytes are inside a request (a broken chunked body), that request can never complete: queued behind
        requests still being answered, it leaves the queue and the 400 is its answer, after theirs; running, it
        gets the 400 at once, unless it was answered before its body was read (a 415, say): then the connection
        closes once that answer is out, with no second one (at the latest after the keep-alive timeout, should
        the application wait for the body that cannot come)."""
        cycle = self.cycle
        if cycle is not None and not self.request_complete():  # the bad bytes are inside this request
            if cycle.response_complete:
                self.transport.close()
                return
            if getattr(cycle, "response_started", False):  # (a fast request answers only once its body is in)
                self._hold(CLOSE_ONLY)  # its response may wait for a body that never comes: close in any case
                self.loop.call_later(self.timeout_keep_alive, self._close_if_held)
                return
            if not self._queued(cycle):
                self._write_error(400, code, message)
                return
            self.pipeline.popleft()
        elif cycle is None or cycle.response_complete:
            self._write_error(400, code, message)
            return
        self._hold((code, message))

    def _queued(self, cycle: Any) -> bool:
        """Whether ``cycle`` waits in uvicorn's queue (newest first: appendleft) behind a request in flight."""
        return bool(self.pipeline) and self.pipeline[0][0] is cycle

    def _hold(self, refusal: tuple[str, str]) -> None:
        if self._refusal is None:
            self._refusal = refusal
            self.transport.pause_reading()

    def _close_if_held(self) -> None:
        if self._refusal is CLOSE_ONLY and not self.transport.is_closing():
            self.transport.close()

    def refusal_due(self) -> bool:
        """Called as a response completes: write a held refusal once no request is left to answer (True)."""
        if self._refusal is None or self.pipeline or self.transport.is_closing():
            return False
        refusal, self._refusal = self._refusal, None
        self.server_state.total_requests += 1  # the response that just completed (uvicorn's count, skipped)
        if refusal is CLOSE_ONLY:
            self.transport.close()
            return True
        self._write_error(400, *refusal)
        return True

    def on_response_complete(self) -> None:
        if not self.refusal_due():
            super().on_response_complete()

    def _write_error(self, status: int, code: str, message: str) -> None:
        """A JSON error (the shape of every other) with ``connection: close``, then the close."""
        body = orjson.dumps({"error": message, "code": code, "status": status})
        head = response_head(self.server_state.default_headers, status, _JSON)
        self.transport.write(b"%scontent-length: %d\r\nconnection: close\r\n\r\n%s" % (head, len(body), body))
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._hdr_partial = False
        if self._hdr_slow:
            self._slow_headers_done()
        if self.parser.should_upgrade():
            return  # refused in data_received, once the parser stops at the upgrade: no cycle, no task
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.parser.should_upgrade():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:  # answered before its body was read (a 413 or 415):
            cycle.more_body = False  # uvicorn leaves it "incomplete", and bytes after it would pass for its body
            # its answer armed no keep-alive timer that still runs (the body's bytes cancelled uvicorn's; the fast
            # path's fired while the message was in progress): arm one now, or the idle connection stays open
            if self.timeout_keep_alive_task is None:
                handler = self.timeout_keep_alive_handler
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, handler)
        super().on_message_complete()

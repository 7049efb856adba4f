"""Write combining for uvicorn's httptools protocol: a response's header and body leave in one send().

uvicorn writes the status line and headers, then the body, as two socket writes; on loopback each write is a
syscall that also wakes the client. Writes made during one event-loop step are joined and sent together
at the start of the next, which halves the syscalls and wake-ups per response. Used by the model server
and, so the comparison stays fair, by the bare benchmark server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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


class CombiningHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`CombiningTransport` (pass as ``uvicorn.Config(http=...)``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CombiningTransport(transport, self.loop))  # type: ignore[arg-type]

"""Write combining: writes of one loop step leave as one socket write, and a close never loses buffered bytes."""

from __future__ import annotations

import asyncio

from deploy.serving.transport import CombiningTransport


class RecordingTransport:
    """Records each write, which a real socket cannot tell apart (the next test uses a real socket)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_of_one_step_are_sent_together_at_the_next() -> None:
    async def scenario() -> list[bytes]:
        inner = RecordingTransport()
        transport = CombiningTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"{}")
        assert inner.writes == []
        assert transport.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        transport.write(b"next")
        await asyncio.sleep(0)
        return inner.writes

    assert asyncio.run(scenario()) == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", b"next"]


def test_write_now_sends_at_once_after_what_is_buffered() -> None:
    async def scenario() -> list[bytes]:
        inner = RecordingTransport()
        transport = CombiningTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"head")
        transport.write_now(b"whole answer")
        assert inner.writes == [b"head", b"whole answer"]
        await asyncio.sleep(0)  # the flush scheduled by the first write finds nothing left
        inner.closed = True
        transport.write_now(b"lost with the connection")
        return inner.writes

    assert asyncio.run(scenario()) == [b"head", b"whole answer"]


def test_over_a_real_socket_bytes_arrive_in_order_and_close_loses_nothing() -> None:
    async def scenario() -> bytes:
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await received.put(await reader.read())  # until EOF: everything the client sent before closing
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        inner, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transport = CombiningTransport(inner, loop)
        transport.write(b"head;")
        transport.write(b"")
        transport.write(bytearray(b"body;"))
        assert transport.get_extra_info("peername")[1] == port
        transport.close()  # flushes first
        data = await asyncio.wait_for(received.get(), 10)
        server.close()
        await server.wait_closed()
        return data

    assert asyncio.run(scenario()) == b"head;body;"

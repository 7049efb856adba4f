"""A bare ASGI app that answers the predict request without a model: the HTTP ceiling for the benchmark.

It does the same HTTP work as the model server (read the body, parse it with orjson, answer a JSON body of the
same shape) and nothing else. ``python -m benchmarks.bare --port P`` runs it as an ASGI app (the ceiling
the serving issue names); ``--fast`` answers through the same protocol fast path as the model server
(deploy/serving/fastpath.py), the like-for-like ceiling for that server's prediction route; ``--plain`` answers
from a bare asyncio protocol over httptools, with no HTTP framework at all: the floor of Python HTTP on this
machine, which shows what the core allows a server whose requests cost little.

Two ways to make that plain server cost as much per request as the model server, without its structure:
``--work-us N`` runs a fixed piece of interpreter work per request, calibrated at start to take N microseconds
on this core; like any real request's work, it takes longer while the core runs slow. ``--burn-us N`` instead
spends N microseconds of the thread's CPU clock in a busy loop, which a slow core does not lengthen: a server
whose cost stays fixed whatever the core does (the benchmark shows both, so the difference is measured, not
assumed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

log = logging.getLogger(__name__)

_ANSWER = orjson.dumps(
    {
        "predictions": [{"class": "benign", "probabilities": [0.0123456789, 0.9876543211]}],
        "model_name": "bare",
        "model_version": "0",
    }
)
_JSON = [(b"content-type", b"application/json")]
_HEADERS = [*_JSON, (b"content-length", str(len(_ANSWER)).encode())]


class FixedAnswer:
    """The fast path's server side for the benchmark: parse the body, answer the constant."""

    max_body_bytes = 1_048_576

    def fast_route(self, path: bytes) -> bool | None:
        return True if path.endswith(b":predict") else None

    def fast_call(self, route: Any, headers: list[tuple[bytes, bytes]], peer: str | None, body: bytes) -> Any:
        orjson.loads(body or b"{}")
        return 200, _ANSWER, _JSON

    def fast_record(self, route: Any, status: int, seconds: float) -> None:
        """Nothing to count."""


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Read the whole body, parse it, answer a fixed prediction."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    orjson.loads(body or b"{}")
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _ANSWER})


def burn(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time (time taken from the thread by others does not count)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def work(iterations: int) -> float:
    """Fixed interpreter work: the same bytecode on every call, so it takes longer when the core runs slow."""
    x = 0.0
    for i in range(iterations):
        x = x * 0.5 + i
    return x


def calibrate(microseconds: float, trials: int = 9, probe: int = 20_000) -> int:
    """Iterations of :func:`work` that take ``microseconds`` on this core now (median speed of ``trials``)."""
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        work(probe)
        rates.append(probe / (time.perf_counter() - start))
    return max(1, round(statistics.median(rates) * microseconds / 1e6))


def plain_protocol(burn_us: float = 0.0, work_iterations: int = 0) -> type[asyncio.Protocol]:
    """An HTTP/1.1 keep-alive protocol over httptools that parses each body and answers the fixed prediction
    (after ``burn_us`` microseconds of CPU and ``work_iterations`` of :func:`work` per request, when given)."""
    import httptools

    cost = burn_us / 1e6

    response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(_ANSWER),
        _ANSWER,
    )

    class PlainProtocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            self.parser = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            orjson.loads(b"".join(self.body) or b"{}")
            self.body = []
            if cost:
                burn(cost)
            if work_iterations:
                work(work_iterations)
            self.transport.write(response)  # type: ignore[attr-defined]
            if not self.parser.should_keep_alive():
                self.transport.close()

    return PlainProtocol


async def _serve_plain(port: int, burn_us: float, work_iterations: int) -> None:
    protocol = plain_protocol(burn_us, work_iterations)
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    import uvicorn

    from deploy.serving.fastpath import protocol_for
    from deploy.serving.transport import CombiningHttpToolsProtocol

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bare")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fast", action="store_true", help="answer through the protocol fast path")
    parser.add_argument("--plain", action="store_true", help="answer from a bare asyncio protocol (no framework)")
    parser.add_argument("--burn-us", type=float, default=0.0, help="with --plain: CPU microseconds spent per request")
    parser.add_argument(
        "--work-us", type=float, default=0.0, help="with --plain: fixed work per request, calibrated to take this long"
    )
    args = parser.parse_args()
    if (args.burn_us or args.work_us) and not args.plain:
        parser.error("--burn-us and --work-us need --plain")
    if args.plain:
        import uvloop

        iterations = calibrate(args.work_us) if args.work_us > 0 else 0
        if iterations:
            log.warning(
                "%d iterations of fixed work per request (%.1f us on this core at start)", iterations, args.work_us
            )
        uvloop.run(_serve_plain(args.port, args.burn_us, iterations))
        return
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http=protocol_for(FixedAnswer()) if args.fast else CombiningHttpToolsProtocol,
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()

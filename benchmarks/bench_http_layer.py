#!/usr/bin/env python
"""CPU per prediction request of the HTTP layer alone, in-process: no sockets, no scheduler, no machine noise.

The same request bytes are fed to each protocol over a transport that discards what is written, and the loop
runs the answer callbacks; the process CPU time per request is what the layer itself costs. It compares the
model server's fast path (uvicorn's httptools protocol, subclassed; `deploy/serving/fastpath.py`) with the bare
asyncio protocol the serving benchmark uses as its no-framework reference (`benchmarks/bare.py --plain`),
both answering the fixed prediction without a model. Writes benchmarks/results/bench_http_layer.json.
Run: ``.venv/bin/python benchmarks/bench_http_layer.py --rounds 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import RESULTS

BODY = b'{"instances":[[' + b",".join(b"%.6f" % (i * 1.1) for i in range(30)) + b"]]}"
REQUEST = (
    b"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: %d\r\n"
    b"Content-Type: application/json\r\n\r\n%s" % (len(BODY), BODY)
)


class NullTransport(asyncio.Transport):
    """Counts writes and drops them; answers what the protocols ask of a TCP transport."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        """Nothing to pause."""

    def resume_reading(self) -> None:
        """Nothing to resume."""

    def get_write_buffer_size(self) -> int:
        return 0


def make_protocol(kind: str) -> asyncio.Protocol:
    """A fresh protocol of the given kind, built the way its server builds it."""
    from benchmarks.bare import FixedAnswer, app, plain_protocol

    if kind == "plain":
        return plain_protocol()()
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from deploy.serving.fastpath import protocol_for

    config = Config(app, http=protocol_for(FixedAnswer()), lifespan="off", access_log=False)
    config.load()
    return config.http_protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]


async def cpu_per_request(kind: str, requests: int) -> float:
    """Microseconds of process CPU per request through ``kind``'s protocol (after a warm-up)."""
    protocol = make_protocol(kind)
    transport = NullTransport()
    protocol.connection_made(transport)
    for _ in range(500):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    start = time.process_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the answer is written on the next loop step ...
        await asyncio.sleep(0)  # ... and a combined write flushed on the one after
    cpu = time.process_time() - start
    if transport.writes != requests + 500:
        raise RuntimeError(f"{kind}: {transport.writes} answers for {requests + 500} requests")
    return cpu / requests * 1e6


async def measure(requests: int, rounds: int) -> dict[str, Any]:
    """Interleaved rounds per layer, the median kept."""
    runs: dict[str, list[float]] = {"uvicorn_fast_path": [], "plain": []}
    for _ in range(rounds):
        runs["uvicorn_fast_path"].append(await cpu_per_request("fast", requests))
        runs["plain"].append(await cpu_per_request("plain", requests))
    median = {kind: statistics.median(values) for kind, values in runs.items()}
    return {
        "us_per_request": median,
        "rounds": runs,
        "ratio_fast_path_to_plain": median["uvicorn_fast_path"] / median["plain"],
        "requests_per_round": requests,
    }


def main(argv: list[str] | None = None) -> int:
    import uvloop

    parser = argparse.ArgumentParser(prog="bench_http_layer", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_http_layer.json")
    args = parser.parse_args(argv)
    report = uvloop.run(measure(args.requests, args.rounds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    us = report["us_per_request"]
    sys.stdout.write(
        f"uvicorn fast path {us['uvicorn_fast_path']:.1f} us/request, plain protocol {us['plain']:.1f} us/request: "
        f"{report['ratio_fast_path_to_plain']:.2f}x\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

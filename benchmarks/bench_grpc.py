#!/usr/bin/env python
"""The Open Inference Protocol over gRPC against HTTP V2 JSON, on one server, with the same rows.

One ``python -m deploy.serving`` with MLRELEASE_GRPC_PORT serves both; a client process (one asyncio loop, like the
server) runs ``--clients`` closed-loop workers, each on its own connection (HTTP/1.1 keep-alive, or one gRPC channel
each), for ``--seconds`` per (protocol, batch) cell, the cells interleaved over ``--rounds`` rounds. Both clients
send request bytes built once (JSON body; serialized ModelInferRequest with fp32 contents) and read whole answers
without parsing them, so each pays the least a client can. One answer of each protocol is checked first: the
same probabilities. Writes benchmarks/results/bench_grpc.json.
Run: ``.venv/bin/python benchmarks/bench_grpc.py [--model-dir models] [--seconds 4 --rounds 3 --clients 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np

from benchmarks import REPO, RESULTS
from mlrelease.core.net import free_port, stop_process

INFER = "/inference.GRPCInferenceService/ModelInfer"
Call = Callable[[], Awaitable[None]]


@contextmanager
def server(model_dir: Path, logs: Path) -> Iterator[tuple[str, int, str]]:
    """The model server with gRPC on: (HTTP URL, gRPC port, model name), stopped at the end."""
    port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLRELEASE_")}
    env.update({"MLRELEASE_GRPC_PORT": str(grpc_port), "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO)})
    command = [sys.executable, "-m", "deploy.serving", "--model-dir", str(model_dir), "--port", str(port)]
    with (logs / "server.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{url}/ready", timeout=2)
                if ready.status_code == 200:
                    yield url, grpc_port, ready.json()["model_name"]
                    return
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {(logs / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        raise TimeoutError("server not ready after 120 s")
    finally:
        stop_process(process)


def bodies(name: str, rows: np.ndarray) -> tuple[bytes, bytes]:
    """The same rows as an HTTP V2 request (headers and JSON body) and a serialized ModelInferRequest."""
    from deploy.serving.grpc import tensors
    from deploy.serving.grpc.v2 import grpc_predict_v2_pb2 as pb

    doc = {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}]}
    body = json.dumps(doc).encode()
    http = (
        f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    message = pb.ModelInferRequest(model_name=name)
    message.inputs.add(name="input-0", datatype="FP32", shape=list(rows.shape)).contents.CopyFrom(
        tensors.contents("FP32", rows)
    )
    return http, message.SerializeToString()


async def http_caller(port: int, request: bytes) -> tuple[Call, Call]:
    """One keep-alive HTTP/1.1 connection sending ``request`` and reading each whole answer (must be a 200)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def call() -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
        await reader.readexactly(length)

    async def close() -> None:
        writer.close()

    return call, close


async def grpc_caller(port: int, request: bytes) -> tuple[Call, Call]:
    """One gRPC channel sending the serialized ``request`` and taking each answer as bytes."""
    from grpc import aio

    channel = aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
    method = channel.unary_unary(INFER)

    async def call() -> None:
        await method(request)

    async def close() -> None:
        await channel.close()

    return call, close


async def closed_loop(callers: list[Call], seconds: float) -> dict[str, float]:
    """Every caller in a loop for ``seconds``: requests/s and latency percentiles (ms) over all of them."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(call: Call) -> None:
        while (start := time.perf_counter()) < stop:
            await call()
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker(call) for call in callers))
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


async def cell(protocol: str, port: int, request: bytes, clients: int, seconds: float) -> dict[str, float]:
    """One (protocol, batch) measurement: ``clients`` connections, warmed, then timed."""
    make = http_caller if protocol == "http" else grpc_caller
    made = [await make(port, request) for _ in range(clients)]
    calls = [call for call, _ in made]
    await closed_loop(calls, min(1.0, seconds / 4))  # warm: connections, the server's batch sizes
    result = await closed_loop(calls, seconds)
    for _, close in made:
        await close()
    return result


async def measure(
    ports: dict[str, int], requests: dict[int, dict[str, bytes]], clients: int, seconds: float, rounds: int
) -> list[dict[str, dict[str, float]]]:
    """Every (protocol, batch) cell once per round, in one event loop; the protocols' order alternates by round."""
    measured_rounds = []
    for r in range(rounds):
        measured: dict[str, dict[str, float]] = {}
        order = [("http", "grpc"), ("grpc", "http")][r % 2]  # interleaved: neither always goes first
        for batch, by_protocol in requests.items():
            for protocol in order:
                measured[f"{protocol}@{batch}"] = await cell(
                    protocol, ports[protocol], by_protocol[protocol], clients, seconds
                )
        print(f"round {r + 1}: {json.dumps(measured)}", file=sys.stderr)
        measured_rounds.append(measured)
    return measured_rounds


def same_answers(url: str, grpc_port: int, name: str, rows: np.ndarray) -> None:
    """HTTP V2 and gRPC answer the benchmark's rows with the same probabilities (else the comparison is void)."""
    import grpc

    from deploy.serving.grpc import tensors
    from deploy.serving.grpc.v2 import grpc_predict_v2_pb2 as pb

    doc = {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}]}
    http = httpx.post(f"{url}/v2/models/{name}/infer", json=doc, timeout=10).json()["outputs"][0]["data"]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        answer = pb.ModelInferResponse.FromString(
            channel.unary_unary(INFER)(bodies(name, rows)[1], timeout=10)  # bytes in, bytes out
        )
    np.testing.assert_allclose(tensors.as_numpy(answer.outputs[0]).reshape(-1), http, atol=1e-6)


def summarise(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Median of the rounds per cell, and gRPC/HTTP ratios per batch size."""
    cells = {key: {m: statistics.median(r[key][m] for r in rounds) for m in rounds[0][key]} for key in rounds[0]}
    ratios = {}
    for batch in sorted({key.split("@")[1] for key in cells}, key=int):
        grpc_cell, http_cell = cells[f"grpc@{batch}"], cells[f"http@{batch}"]
        ratios[f"batch {batch}"] = {
            "rps grpc/http": round(grpc_cell["rps"] / http_cell["rps"], 2),
            "p50 grpc/http": round(grpc_cell["p50_ms"] / http_cell["p50_ms"], 2),
            "p99 grpc/http": round(grpc_cell["p99_ms"] / http_cell["p99_ms"], 2),
            "rows/s grpc": round(grpc_cell["rps"] * int(batch)),
            "rows/s http": round(http_cell["rps"] * int(batch)),
        }
    return {"cells": cells, "ratios": ratios}


def model_dir(given: Path | None, work: Path) -> Path:
    """The bundle to serve: ``--model-dir``, else ``models/`` (make demo), else a small one trained here."""
    for candidate in (given, REPO / "models"):
        if candidate is not None and (candidate / "model.pt").is_file():
            return candidate
    from tests.serving_helpers import make_bundle  # the tests' breast-cancer MLP (30 -> 16 -> 2), about a second

    return make_bundle(work / "bundle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="concurrent closed-loop connections")
    parser.add_argument("--batches", default="1,32", help="rows per request")
    args = parser.parse_args(argv)
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data.astype(np.float32)
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = model_dir(args.model_dir, work)
        with server(bundle, work) as (url, grpc_port, name):
            ports = {"http": int(url.rsplit(":", 1)[1]), "grpc": grpc_port}
            requests = {}
            for batch in batches:
                same_answers(url, grpc_port, name, x[:batch])
                requests[batch] = dict(zip(("http", "grpc"), bodies(name, x[:batch]), strict=True))
            rounds = asyncio.run(measure(ports, requests, args.clients, args.seconds, args.rounds))
    result = {
        "what": "one server, HTTP V2 JSON (fast path) against gRPC ModelInfer (fp32 contents), the same rows",
        "clients": args.clients,
        "seconds_per_cell": args.seconds,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        **summarise(rounds),
        "runs": rounds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_grpc.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

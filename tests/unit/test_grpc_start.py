"""Starting gRPC in process: a taken port is one line naming the setting, and the server does not start."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from deploy.serving.app import ModelServer
from deploy.serving.config import ServingSettings


def test_a_taken_grpc_port_fails_the_startup_with_one_line(bundle: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = ModelServer(ServingSettings(model_dir=bundle, host="127.0.0.1", grpc_port=port))
        sent: list[dict[str, Any]] = []

        async def lifespan() -> None:
            async def receive() -> dict[str, Any]:
                return {"type": "lifespan.startup"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            await app({"type": "lifespan"}, receive, send)

        asyncio.run(asyncio.wait_for(lifespan(), 30))
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]  # uvicorn prints the message and exits
    message = sent[0]["message"]
    assert f"cannot serve gRPC on 127.0.0.1:{port}" in message and "MLRELEASE_GRPC_PORT" in message
    assert "\n" not in message


def test_the_grpc_port_is_off_by_default_and_not_the_http_port() -> None:
    assert ServingSettings(model_dir=Path("m")).grpc_port is None
    try:
        ServingSettings(model_dir=Path("m"), port=9000, grpc_port=9000)
    except ValueError as exc:
        assert "give gRPC a port of its own" in str(exc)
    else:
        raise AssertionError("the same port for HTTP and gRPC was accepted")

"""A bare ASGI app that answers the predict request without a model: the HTTP ceiling for the benchmark.

It does the same HTTP work as the model server (read the body, parse it with orjson, answer a JSON body of the
same shape) and nothing else. ``python -m deploy.serving.bare --port P``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

_ANSWER = orjson.dumps(
    {
        "predictions": [{"class": "benign", "probabilities": [0.0123456789, 0.9876543211]}],
        "model_name": "bare",
        "model_version": "0",
    }
)
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_ANSWER)).encode())]


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


def main() -> None:
    import uvicorn

    from deploy.serving.transport import CombiningHttpToolsProtocol

    parser = argparse.ArgumentParser(prog="python -m deploy.serving.bare")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http=CombiningHttpToolsProtocol,
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()

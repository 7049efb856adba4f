"""The raw ASGI plumbing the model server's handlers share: message types, JSON errors, the checked request body.

No framework: a handler takes (scope, receive, model name) and returns (status, body, headers); a client mistake
is a ``ClientError`` that becomes the JSON answer naming it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from deploy.serving.payload import ClientError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Response = tuple[int, bytes, Headers]
Handler = Callable[[Scope, Receive, str], Awaitable[Response]]

JSON: Headers = [(b"content-type", b"application/json")]


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def check_content_type(headers: Headers) -> None:
    """Prediction bodies are JSON: anything else is a 415 that says what to send."""
    ctype = b""
    for key, value in headers:
        if key == b"content-type":
            ctype = value
    if ctype.split(b";", 1)[0].strip().lower() != b"application/json":
        raise ClientError(
            415,
            "unsupported_media_type",
            f"Content-Type {ctype.decode('latin-1')[:60]!r} is not supported; send 'Content-Type: application/json'",
        )


def error_response(exc: ClientError) -> Response:
    """A client mistake as the JSON answer both request paths send."""
    return exc.status, exc.body(), JSON + exc.headers


def peer(scope: Scope) -> str | None:
    """The connecting address, as the rate limiter takes it (None if the server does not know it)."""
    client = scope.get("client")
    return str(client[0]) if client else None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, after checking Content-Type and the size limit (413) before buffering it."""
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > limit:
            raise ClientError(413, "body_too_large", f"body of {int(value)} bytes exceeds the limit of {limit}")
    check_content_type(scope["headers"])
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ClientError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)

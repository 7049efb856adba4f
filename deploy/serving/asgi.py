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


_JSON_TYPE = b"application/json"
CHARSETS = (b"utf-8", b"us-ascii")  # what orjson reads: JSON is UTF-8 (RFC 8259), and ASCII is a subset of it


def check_content_type(headers: Headers) -> None:
    """Prediction bodies are JSON as sent: another media type, a charset other than UTF-8 (or its ASCII subset), or
    a Content-Encoding (gzip, ...) is a 415 that says what to send, since the server decodes none of them."""
    ctype = b""
    encoding = b""
    for key, value in headers:
        if key == b"content-type":
            ctype = value
        elif key == b"content-encoding":
            encoding = value if not encoding else encoding + b", " + value
    if encoding:
        _check_encoding(encoding)
    if ctype != _JSON_TYPE:
        _check_json_type(ctype)


def _check_encoding(encoding: bytes) -> None:
    """A 415 unless every coding named is identity (no coding at all)."""
    if any(coding.strip().lower() not in (b"identity", b"") for coding in encoding.split(b",")):
        raise ClientError(
            415,
            "unsupported_content_encoding",
            f"Content-Encoding {encoding.decode('latin-1')[:60]!r} is not supported; send the body uncompressed "
            "(no Content-Encoding header)",
            headers=[(b"accept-encoding", b"identity")],
        )


def _check_json_type(ctype: bytes) -> None:
    """A 415 unless ``ctype`` is application/json, with no charset or a charset JSON allows."""
    media, _, parameters = ctype.partition(b";")
    if media.strip().lower() != _JSON_TYPE:
        raise ClientError(
            415,
            "unsupported_media_type",
            f"Content-Type {ctype.decode('latin-1')[:60]!r} is not supported; send 'Content-Type: application/json'",
        )
    for parameter in parameters.split(b";"):
        name, _, value = parameter.partition(b"=")
        charset = value.strip().strip(b'"').lower()
        if name.strip().lower() == b"charset" and charset not in CHARSETS:
            raise ClientError(
                415,
                "unsupported_charset",
                f"charset {charset.decode('latin-1')[:40]!r} is not supported; JSON bodies are UTF-8: send "
                "'Content-Type: application/json' (or '; charset=utf-8')",
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

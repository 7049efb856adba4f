"""The HTTP server's errors as gRPC status codes, and gRPC call metadata as the HTTP checks read headers.

One table for every call: a client's mistake (4xx) is never INTERNAL, so a gRPC client retries only what is worth
retrying (UNAVAILABLE: loading, draining, overloaded, circuit open).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from deploy.serving.payload import ClientError

INTERNAL_MESSAGE = "internal server error"  # the words of the HTTP 500
#: HTTP status -> gRPC status (https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md, reversed
#: for what this server raises); any other 4xx is INVALID_ARGUMENT
_CODES = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
_PASSED_ON = (b"retry-after", b"www-authenticate")  # the error's headers a gRPC client can use (trailing metadata)


def status_code(error: ClientError) -> grpc.StatusCode:
    """The gRPC status for one of the server's errors: its 4xx are the client's (never INTERNAL)."""
    code = _CODES.get(error.status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if error.status < 500 else grpc.StatusCode.UNAVAILABLE


def trailing_metadata(error: ClientError) -> tuple[tuple[str, str], ...]:
    """The error's Retry-After and WWW-Authenticate, as trailing metadata, plus its code (``bad_shape``, ...)."""
    passed = [(name.decode(), value.decode("latin-1")) for name, value in error.headers if name in _PASSED_ON]
    return (("error-code", error.code), *passed)


def headers(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[tuple[bytes, bytes]]:
    """gRPC call metadata as the header list the HTTP checks read (lower-case names, bytes)."""
    return [
        (key.lower().encode("latin-1"), value if isinstance(value, bytes) else value.encode("latin-1", "replace"))
        for key, value in metadata or ()
    ]


def peer_address(peer: str) -> str:
    """The client address of a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:...``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("[") and "]" in rest:
        return rest[1 : rest.index("]")]
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    return peer

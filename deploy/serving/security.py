"""Authentication with constant-time comparison, and a per-client token-bucket rate limiter."""

from __future__ import annotations

import hmac
import time

_BEARER = b"bearer "


def presented_secret(headers: list[tuple[bytes, bytes]], allow_api_key_header: bool) -> bytes | None:
    """The credential a request carries: ``X-API-Key: X`` (when allowed) first, else ``Authorization: Bearer X``."""
    bearer = None
    for name, value in headers:
        if allow_api_key_header and name == b"x-api-key":
            return value.strip()
        if name == b"authorization" and value[:7].lower() == _BEARER:
            bearer = value[7:].strip()
    return bearer


def client_address(peer: str, headers: list[tuple[bytes, bytes]], trusted: frozenset[str]) -> str:
    """Who the rate limit counts a request against: the peer, or behind a trusted proxy the address it saw.

    A trusted proxy (the loopback nginx) appends the address it received from to ``X-Forwarded-For``, so that
    list is walked from the right past trusted hops; a header from an untrusted peer is ignored, since any
    client can send one. Only the rate limiter needs this, so it is not computed on every request.
    """
    if peer not in trusted:
        return peer
    forwarded = [value for name, value in headers if name == b"x-forwarded-for"]
    if not forwarded:
        return peer
    hops = [hop.strip() for hop in b",".join(forwarded).decode("latin-1").split(",")]
    for hop in reversed(hops):
        if hop and hop not in trusted:
            return hop
    return peer


def secret_matches(presented: bytes | None, expected: bytes) -> bool:
    """Compare in constant time, so response timing does not leak how much of a guess was right."""
    if presented is None:
        return False
    return hmac.compare_digest(presented, expected)


class RateLimiter:
    """Token bucket per client: ``rate`` tokens/s up to ``burst``; forgets clients whose bucket is full."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def retry_after(self, client: str, now: float | None = None) -> float:
        """0.0 if the request may proceed (a token is spent), else seconds until a token is available."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > self.max_clients:
                self._forget_idle(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        refill = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < refill}

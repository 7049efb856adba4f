"""Event-loop lag: how late a periodic timer runs, for the histogram ``mlrelease_event_loop_lag_seconds``.

Every request on this server is handled on one event loop, so anything that holds the loop (a slow callback, a
long batch, the machine taking the core away) delays every request in flight at once. A timer due every
``interval`` seconds records how late it ran: the histogram tells such stalls apart from slow requests, which the
latency histogram alone cannot (the same idea as Node's event-loop-delay monitor).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LoopLagMonitor:
    """Observes, every ``interval`` seconds, how many seconds late the loop ran a timer due then."""

    def __init__(self, observe: Callable[[float], None], interval: float) -> None:
        if interval <= 0:
            raise ValueError("the loop-lag interval must be positive")
        self._observe = observe
        self._interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin sampling on ``loop`` (the server's, at startup)."""
        self._loop = loop
        self._schedule()

    def stop(self) -> None:
        """No more samples (at shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        assert self._loop is not None
        due = self._loop.time() + self._interval
        self._handle = self._loop.call_at(due, self._tick, due)

    def _tick(self, due: float) -> None:
        assert self._loop is not None
        self._observe(max(0.0, self._loop.time() - due))
        self._schedule()

"""A circuit breaker around the model call: stop calling a model that keeps failing, then test it with one probe.

Closed, it lets every call through and counts consecutive failures; at ``failures`` of them it opens. Open, it
refuses calls (the server answers 503 ``circuit_open`` at once) until ``reset_s`` have passed; then the next call is
let through as the probe (half-open) and the others are still refused. The probe's success closes it, its failure
opens it again for another ``reset_s``; a probe that never reports is replaced by another after ``reset_s``.

Outcomes are reported from the model thread while the event loop asks ``allow``, so transitions take a lock; the
closed state's checks (one attribute read per request, two per batch) do not.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitBreaker:
    """Consecutive-failure breaker with a clock parameter (tests pass their own); ``failures=0`` disables it."""

    def __init__(
        self,
        failures: int,
        reset_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self.state = CLOSED
        self.opens = 0  # times it opened (a failed probe opens it again and counts again)
        self._clock = clock
        self._on_change = on_change  # called with True when it opens, False when it closes (outside the lock)
        self._lock = threading.Lock()
        self._failures = 0
        self._since = 0.0  # when it opened, or when the half-open probe went through

    @property
    def closed(self) -> bool:
        """Whether calls go through unchecked (False while open or half-open: /ready then answers 503)."""
        return self.state is CLOSED

    def allow(self) -> float:
        """0.0 when a call may go to the model (closed, or this call is the probe); else seconds until a probe may."""
        if self.state is CLOSED:
            return 0.0
        with self._lock:
            if self.state is CLOSED:
                return 0.0
            now = self._clock()
            wait = self._since + self.reset_s - now
            if wait > 0:
                return wait
            self.state = HALF_OPEN
            self._since = now
            return 0.0

    def retry_after(self) -> int:
        """Whole seconds (at least 1) until a probe may go: the Retry-After of a refused call."""
        return max(1, math.ceil(self._since + self.reset_s - self._clock()))

    def success(self) -> None:
        """A model call returned: any state closes and the failure count restarts."""
        if self._failures == 0 and self.state is CLOSED:
            return
        with self._lock:
            reopened = self.state is not CLOSED
            self.state = CLOSED
            self._failures = 0
        if reopened and self._on_change is not None:
            self._on_change(False)

    def failure(self) -> None:
        """A model call raised: count it; the ``threshold``-th in a row (or a failed probe) opens the breaker."""
        if not self.threshold:
            return
        with self._lock:
            self._failures += 1
            if self.state is CLOSED and self._failures < self.threshold:
                return
            opening = self.state is not OPEN
            self.state = OPEN
            self._since = self._clock()  # a call still failing while open keeps it open from now
            if opening:
                self.opens += 1
        if opening and self._on_change is not None:
            self._on_change(True)

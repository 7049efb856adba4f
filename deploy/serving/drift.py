"""Input drift per feature: PSI of a rolling window of served rows against the training split's quantile bins.

The hot path only copies rows into a ring buffer; scores are computed when Prometheus scrapes. Batches may run on
the model thread while a scrape runs on the event loop, so both hold a lock: a scrape scores a copy of one window.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from mlrelease.core.modelcard import ReferenceStats

PSI_EPSILON = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two bin-fraction vectors (clipped so empty bins stay finite)."""
    e = np.clip(expected, PSI_EPSILON, None)
    a = np.clip(actual, PSI_EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftMonitor:
    """Keeps the last ``window`` rows and scores each feature that has reference bins."""

    def __init__(self, reference: ReferenceStats, feature_names: list[str], window: int) -> None:
        self.columns: list[tuple[str, int, np.ndarray, np.ndarray]] = []
        for j, name in enumerate(feature_names):
            ref = reference.features.get(name)
            if ref is None or len(ref.edges) != len(ref.fractions) + 1 or len(ref.fractions) < 2:
                continue
            interior = np.asarray(ref.edges[1:-1], dtype=np.float64)
            self.columns.append((name, j, interior, np.asarray(ref.fractions, dtype=np.float64)))
        self._buffer = np.zeros((window, len(feature_names)), dtype=np.float32)
        self._pos = 0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, rows: np.ndarray) -> None:
        """Copy served rows into the ring buffer (oldest rows are overwritten)."""
        size = len(self._buffer)
        rows = rows[-size:]
        with self._lock:
            first = min(len(rows), size - self._pos)
            self._buffer[self._pos : self._pos + first] = rows[:first]
            rest = len(rows) - first
            if rest:
                self._buffer[:rest] = rows[first:]
            self._pos = (self._pos + len(rows)) % size
            self.count = min(size, self.count + len(rows))

    def scores(self) -> dict[str, float]:
        """PSI per feature over the window; empty until a row has been served."""
        with self._lock:
            count = self.count
            window = self._buffer[:count].copy()
        if count == 0:
            return {}
        result: dict[str, float] = {}
        for name, j, interior, expected in self.columns:
            bins = np.searchsorted(interior, window[:, j], side="right")
            actual = np.bincount(bins, minlength=len(expected)) / count
            value = psi(expected, actual)
            result[name] = value if math.isfinite(value) else 0.0
        return result

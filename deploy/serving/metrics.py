"""Prometheus metrics of one server, in its own registry (names are a contract with the canary analysis).

Per-request accounting is plain dict and list arithmetic on the event loop thread (RequestStats), turned into
Prometheus families only when /metrics is scraped; label children of the other metrics are cached.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from deploy.serving.drift import DriftMonitor

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RequestStats(Collector):
    """``mlrelease_requests_total{route,status}`` and ``mlrelease_request_duration_seconds{route}``, kept cheaply."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self._labels = [floatToGoString(b) for b in buckets]
        self.counts: dict[tuple[str, int], int] = {}
        self.histograms: dict[str, list[float]] = {}  # per route: one count per bucket, +Inf count, then the sum
        self.fast = 0  # requests the protocol answered itself (deploy/serving/fastpath.py)

    def record(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        histogram = self.histograms.get(route)
        if histogram is None:
            histogram = self.histograms[route] = [0.0] * (len(self.buckets) + 2)
        histogram[bisect_left(self.buckets, seconds)] += 1
        histogram[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "mlrelease_requests", "HTTP requests by route and status", labels=["route", "status"]
        )
        for (route, status), count in list(self.counts.items()):
            requests.add_metric([route, str(status)], count)
        duration = HistogramMetricFamily(
            "mlrelease_request_duration_seconds", "Request latency by route", labels=["route"]
        )
        for route, histogram in list(self.histograms.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for label, observed in zip([*self._labels, "+Inf"], histogram[:-1], strict=True):
                cumulative += observed
                buckets.append((label, cumulative))
            duration.add_metric([route], buckets, sum_value=histogram[-1])
        yield requests
        yield duration
        yield CounterMetricFamily(
            "mlrelease_fast_path_requests", "Prediction requests answered without an ASGI task", value=self.fast
        )


class DriftCollector(Collector):
    """Exports ``mlrelease_feature_drift_psi{feature}`` computed at scrape time."""

    def __init__(self, current: Callable[[], DriftMonitor | None]) -> None:
        self._current = current

    def collect(self) -> Iterator[GaugeMetricFamily]:
        psi = GaugeMetricFamily(
            "mlrelease_feature_drift_psi",
            "PSI of the rolling input window against the training reference bins",
            labels=["feature"],
        )
        rows = GaugeMetricFamily("mlrelease_drift_window_rows", "Rows in the drift window")
        monitor = self._current()
        if monitor is not None:
            for feature, value in monitor.scores().items():
                psi.add_metric([feature], value)
            rows.add_metric([], monitor.count)
        yield psi
        yield rows


class ConnectionCounts(Protocol):
    """What the connection guard (deploy/serving/transport.py) counts for /metrics."""

    timeouts: int
    refused: int
    half_open: dict[str, int]


class ConnectionCollector(Collector):
    """Header-read timeouts, connections refused over the per-client cap, and connections in their headers now."""

    def __init__(self, counts: ConnectionCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts
        yield CounterMetricFamily(
            "mlrelease_header_timeouts",
            "Connections closed because their request headers did not arrive within MLRELEASE_HEADER_TIMEOUT_S",
            value=counts.timeouts,
        )
        yield CounterMetricFamily(
            "mlrelease_half_open_refused",
            "Connections closed because their client held MLRELEASE_MAX_HALF_OPEN_PER_CLIENT with headers incomplete",
            value=counts.refused,
        )
        yield GaugeMetricFamily(
            "mlrelease_half_open_connections",
            "Connections counted against the per-client cap now (request headers slow to arrive)",
            value=sum(counts.half_open.values()),
        )


class ServerMetrics:
    """Counters, histograms and gauges of the server; ``render()`` is the /metrics body."""

    def __init__(self, drift: Callable[[], DriftMonitor | None]) -> None:
        disable_created_metrics()  # no *_created series: less to scrape, nothing the analysis reads
        self.registry = CollectorRegistry()
        r = self.registry
        GCCollector(registry=r)  # python_gc_*: objects the cyclic collector found, collections per generation
        ProcessCollector(registry=r)  # process_*: CPU seconds, resident memory, open file descriptors
        self.requests = RequestStats()
        r.register(self.requests)
        self.batch_size = Histogram("mlrelease_batch_size", "Rows per model call", buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram(
            "mlrelease_batch_requests", "Requests coalesced per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.predictions = Counter("mlrelease_predictions", "Predicted classes", ["model_version", "class"], registry=r)
        self.model_info = Gauge(
            "mlrelease_model_info",
            "The model being served (value 1)",
            ["name", "version", "sha256"],
            registry=r,
        )
        self.reloads = Counter("mlrelease_model_reloads", "Hot-swap attempts by outcome", ["outcome"], registry=r)
        self.loop_lag = Histogram(
            "mlrelease_event_loop_lag_seconds",
            "How late a periodic timer ran on the server's event loop (stalls delay every request in flight)",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "mlrelease_shed",
            "Predictions refused with 503 'overloaded': they would wait longer than MLRELEASE_MAX_QUEUE_MS",
            registry=r,
        )
        self.breaker_open = Gauge(
            "mlrelease_breaker_open", "1 while the circuit breaker around the model is open or half-open", registry=r
        )
        self.breaker_opens = Counter(
            "mlrelease_breaker_opens", "Times the circuit breaker opened (a failed probe opens it again)", registry=r
        )
        r.register(DriftCollector(drift))
        self._class_children: dict[tuple[str, int], Counter] = {}
        self._info: tuple[str, str, str] | None = None

    def record(self, route: str, status: int, seconds: float, fast: bool = False) -> None:
        """Count one request and observe its latency (``fast``: answered by the protocol fast path)."""
        self.requests.record(route, status, seconds)
        if fast:
            self.requests.fast += 1

    def watch_connections(self, counts: ConnectionCounts) -> None:
        """Export the connection guard's counts (header timeouts, refusals over the per-client cap)."""
        self.registry.register(ConnectionCollector(counts))

    def breaker_changed(self, opened: bool) -> None:
        """The breaker opened (True) or closed (False); called from the model thread (prometheus_client locks)."""
        self.breaker_open.set(1 if opened else 0)
        if opened:
            self.breaker_opens.inc()

    def record_batch(self, rows: int, requests: int) -> None:
        self.batch_size.observe(rows)
        self.batch_requests.observe(requests)

    def record_classes(self, version: str, classes: list[str], predicted: np.ndarray) -> None:
        """Count predicted classes (indices into ``classes``) for one request."""
        counts = np.bincount(predicted, minlength=len(classes)) if len(predicted) > 1 else None
        for k in range(len(classes)) if counts is not None else (int(predicted[0]),):
            n = int(counts[k]) if counts is not None else 1
            if n:
                self._class_child(version, classes, k).inc(n)

    def _class_child(self, version: str, classes: list[str], k: int) -> Counter:
        child = self._class_children.get((version, k))
        if child is None:
            child = self.predictions.labels(version, classes[k])
            self._class_children[(version, k)] = child
        return child

    def set_model(self, name: str, version: str, sha256: str) -> None:
        """Point mlrelease_model_info at the model now serving (and drop the previous label set)."""
        if self._info is not None:
            self.model_info.remove(*self._info)
        self._info = (name, version, sha256)
        self._class_children.clear()
        self.model_info.labels(*self._info).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)

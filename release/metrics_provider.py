"""Where the canary analysis gets each slot's counters: the slots' own /metrics pages through the deployment target
(:class:`ScrapeProvider`, the default) or a team's Prometheus (:class:`PrometheusProvider`), chosen by
``canary.metrics_provider``. Both return a :class:`Reading` per slot, and :func:`between` turns two readings into
the interval's :class:`~release.analysis.Snapshot`, so :func:`release.analysis.measure` judges both alike.

Why the Prometheus provider reads cumulative counters at the interval's two ends rather than ``increase()`` over a
window: ``increase()`` extrapolates to the window's edges, so its counts run 10-25 % high at a few scrapes per
interval (which would sharpen the chi-square and z tests that read them), and it misses a series' first
increments (the first 5xx of a canary starts its series mid-interval). Counters of the same replicas read at two
moments give the integer counts a direct scrape gives, and a replica's restart is seen per ``instance`` as
:func:`release.analysis.delta` sees it on one page. A reading is taken on Prometheus' clock: it waits until
Prometheus has scraped every replica of every slot asked for after the reading began, then evaluates all counts at
one instant. No data (Prometheus unreachable, an error, no series of the slot, no fresh scrape within
``canary.prometheus_scrape_wait``) is ``NoAnswer(no_data=True)``: inconclusive, never a pass. A slot whose every
replica Prometheus failed to scrape (``up == 0``) did not answer /metrics, as with a direct scrape.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from deploy.targets.base import DeploymentError, DeploymentTarget
from mlrelease.core.params import CanaryParams
from release import promql
from release.analysis import NoAnswer, Snapshot, count_requests, delta, parse_metrics
from release.states import PROD

WHOLE_PAGE = "*"  # a direct scrape's one source: the slot's replicas' pages together


@dataclass(frozen=True)
class Reading:
    """One slot's cumulative counters at one moment, per source: a replica (Prometheus' ``instance``) or, for a
    direct scrape, all of the slot's pages at once."""

    sources: dict[str, Snapshot] = field(default_factory=dict)


class MetricsProvider(ABC):
    """Reads the production slots' counters for the canary analysis."""

    name = "abstract"

    @abstractmethod
    def read(self, slots: Sequence[str]) -> dict[str, Reading | NoAnswer]:
        """Each slot's counters now, or why there are none."""


def scrape(target: DeploymentTarget, slot: str, environment: str = PROD) -> Snapshot | NoAnswer:
    """The slot's metrics through the target, parsed; NoAnswer with the reason when it gives no readable metrics
    page (no data is never a pass)."""
    try:
        text = target.slot_metrics(environment, slot)
    except DeploymentError as exc:
        return NoAnswer(str(exc))
    try:
        return parse_metrics(text)
    except ValueError as exc:
        return NoAnswer(f"unreadable metrics page from {environment}/{slot} ({str(exc)[:200]})")


class ScrapeProvider(MetricsProvider):
    """Each slot's own /metrics pages, through the deployment target (the embedded default)."""

    name = "scrape"

    def __init__(self, target: DeploymentTarget, environment: str = PROD) -> None:
        self.target = target
        self.environment = environment

    def read(self, slots: Sequence[str]) -> dict[str, Reading | NoAnswer]:
        """Scrape the slots one after the other, in the order given."""
        found: dict[str, Reading | NoAnswer] = {}
        for slot in slots:
            snap = scrape(self.target, slot, self.environment)
            found[slot] = snap if isinstance(snap, NoAnswer) else Reading({WHOLE_PAGE: snap})
        return found


def _at(answer: NoAnswer, end: str) -> NoAnswer:
    """``answer`` saying at which ``end`` of the interval (start or end) the slot gave no counters."""
    return NoAnswer(f"{answer.reason} at the {end} of the interval", answer.no_data)


def interval_delta(before: Snapshot | NoAnswer, after: Snapshot | NoAnswer) -> Snapshot | NoAnswer:
    """The slot's counters over the interval, or why it did not answer at its start or its end."""
    if isinstance(before, NoAnswer):
        return _at(before, "start")
    if isinstance(after, NoAnswer):
        return _at(after, "end")
    return delta(after, before)


def between(before: Reading | NoAnswer, after: Reading | NoAnswer) -> Snapshot | NoAnswer:
    """The slot's counters over the interval, source by source (a source new at the end counts from zero; one gone
    counts nothing), or why there were none at its start or its end."""
    if isinstance(before, NoAnswer):
        return _at(before, "start")
    if isinstance(after, NoAnswer):
        return _at(after, "end")
    total = Snapshot()
    for source, snap in after.sources.items():
        add(total, delta(snap, before.sources.get(source, Snapshot())))
    return total


def add(total: Snapshot, part: Snapshot) -> None:
    """Add ``part``'s counts to ``total``."""
    total.requests += part.requests
    total.errors += part.errors
    total.client_errors += part.client_errors
    total.rate_limited += part.rate_limited
    for le, n in part.buckets.items():
        total.buckets[le] = total.buckets.get(le, 0.0) + n
    for cls, n in part.classes.items():
        total.classes[cls] = total.classes.get(cls, 0.0) + n


class PrometheusError(RuntimeError):
    """Prometheus did not answer a query with data: no data, never a pass."""


class SlotNotScraped(RuntimeError):
    """Prometheus scraped none of the slot's replicas: the slot did not answer /metrics."""


Sample = tuple[dict[str, str], float]


class PrometheusProvider(MetricsProvider):
    """PromQL (:mod:`release.promql`) over the slots' series in a Prometheus at ``url``, selected by
    ``environment``, ``slot`` and the extra ``labels``."""

    name = "prometheus"

    def __init__(
        self,
        url: str,
        environment: str = PROD,
        *,
        labels: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
        scrape_wait_s: float = 30.0,
        poll_s: float = 0.25,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.environment = environment
        self.labels = dict(labels or {})
        self.timeout_s = timeout_s
        self.scrape_wait_s = scrape_wait_s
        self.poll_s = poll_s
        self.transport = transport  # tests answer with httpx.MockTransport
        self.sleep = sleep
        self._client: httpx.Client | None = None  # one per reading: connections kept for its queries

    def selector(self, slot: str) -> dict[str, str]:
        """The label matchers of one slot's series."""
        return {**self.labels, "environment": self.environment, "slot": slot}

    def read(self, slots: Sequence[str]) -> dict[str, Reading | NoAnswer]:
        """Every slot's counters at one instant after Prometheus scraped all their replicas again."""
        with httpx.Client(timeout=self.timeout_s, transport=self.transport) as client:
            self._client = client
            try:
                return self._read(slots)
            finally:
                self._client = None

    def _read(self, slots: Sequence[str]) -> dict[str, Reading | NoAnswer]:
        try:
            start, scraped = self._await_scrapes(slots)
            at = self._now()
        except PrometheusError as exc:
            return {slot: NoAnswer(str(exc), no_data=True) for slot in slots}
        found: dict[str, Reading | NoAnswer] = {}
        for slot in slots:
            try:
                found[slot] = self._reading(slot, scraped[slot], start, at)
            except PrometheusError as exc:
                found[slot] = NoAnswer(str(exc), no_data=True)
            except SlotNotScraped as exc:
                found[slot] = NoAnswer(str(exc))
        return found

    # ----- freshness --------------------------------------------------------------------------------------------
    def _await_scrapes(self, slots: Sequence[str]) -> tuple[float, dict[str, dict[str, float]]]:
        """When the reading began (Prometheus' clock) and, once every replica of ``slots`` was scraped after that
        or the wait ran out, each slot's replicas with the time of their last scrape."""
        start = self._now()
        deadline = time.monotonic() + self.scrape_wait_s
        while True:
            scraped = {slot: self._last_scrapes(slot) for slot in slots}
            if all(times and min(times.values()) >= start for times in scraped.values()):
                return start, scraped
            if time.monotonic() >= deadline:
                return start, scraped
            self.sleep(self.poll_s)

    def _last_scrapes(self, slot: str) -> dict[str, float]:
        """Each replica of the slot (``instance``) with the time Prometheus last scraped it."""
        return {labels.get("instance", ""): t for labels, t in self._query(promql.last_scrape(self.selector(slot)))}

    def _now(self) -> float:
        """Prometheus' own clock (unix seconds), so a reading does not depend on this host's."""
        data = self._get({"query": "time()"})
        try:
            return float(data["result"][1])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {self.url}: unexpected answer to time(): {data!r:.200}") from exc

    # ----- one slot -----------------------------------------------------------------------------------------------
    def _reading(self, slot: str, scraped: dict[str, float], start: float, at: float) -> Reading:
        """The slot's counters at ``at``; PrometheusError when there are none to read, SlotNotScraped when
        Prometheus could not scrape any of its replicas."""
        where = f"{self.environment}/{slot}"
        if not scraped:
            raise PrometheusError(
                f"Prometheus at {self.url} has no series {promql.scrape_health(self.selector(slot))}: is {where} "
                "among its targets? (the local target lists its replicas in .mlrelease/prometheus/targets.json)"
            )
        stale = sorted(instance for instance, t in scraped.items() if t < start)
        if stale:
            raise PrometheusError(
                f"Prometheus at {self.url} has not scraped {where} ({', '.join(stale)}) in the "
                f"{self.scrape_wait_s:g} s since the reading began: keep canary.prometheus_scrape_wait above "
                "its scrape interval"
            )
        health = self._query(promql.scrape_health(self.selector(slot)), at)
        live = sorted(labels.get("instance", "") for labels, up in health if up == 1)
        if not live:
            raise SlotNotScraped(f"Prometheus could not scrape any replica of {where} ({', '.join(sorted(scraped))})")
        return self._counters(self.selector(slot), at, live)

    def _counters(self, labels: dict[str, str], at: float, live: list[str]) -> Reading:
        """The cumulative counts of the replicas ``live`` at ``at``, one Snapshot each."""
        snaps = {instance: Snapshot() for instance in live}
        for sample, value in self._query(promql.requests_by_status(labels), at):
            if (snap := snaps.get(sample.get("instance", ""))) is not None:
                count_requests(snap, sample.get("status", ""), value)
        for sample, value in self._query(promql.latency_buckets(labels), at):
            if (snap := snaps.get(sample.get("instance", ""))) is not None:
                snap.buckets[float(sample.get("le", "+Inf"))] = value
        for sample, value in self._query(promql.predicted_classes(labels), at):
            if (snap := snaps.get(sample.get("instance", ""))) is not None:
                snap.classes[sample.get("class", "?")] = value
        return Reading(snaps)

    # ----- HTTP -----------------------------------------------------------------------------------------------------
    def _query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant vector query's samples (labels, value), at ``at`` or now."""
        data = self._get({"query": expr} | ({} if at is None else {"time": f"{at:.3f}"}))
        if data.get("resultType") != "vector":
            raise PrometheusError(f"Prometheus at {self.url}: {expr} gave a {data.get('resultType')}, not a vector")
        try:
            return [(dict(item.get("metric", {})), float(item["value"][1])) for item in data.get("result", [])]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {self.url}: unreadable answer to {expr}: {exc}") from exc

    def _get(self, params: dict[str, str]) -> dict[str, Any]:
        """``/api/v1/query`` answered with status success: its ``data``; PrometheusError saying why not."""
        if self._client is None:
            raise RuntimeError("PrometheusProvider queries only within read()")
        try:
            response = self._client.get(f"{self.url}/api/v1/query", params=params)
        except httpx.HTTPError as exc:
            said = _one_line(f"{type(exc).__name__}: {exc}")
            raise PrometheusError(f"Prometheus at {self.url} did not answer: {said}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("status") != "success" or not isinstance(body.get("data"), dict):
            detail = _one_line(str(body.get("error", "")) if isinstance(body, dict) else response.text)
            code = response.status_code
            raise PrometheusError(f"Prometheus at {self.url}: HTTP {code} to {params['query']}: {detail}")
        return dict(body["data"])


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut at ``limit`` characters (an error message for a log line)."""
    return " ".join(text.split())[:limit]


def make_provider(params: CanaryParams, target: DeploymentTarget, environment: str = PROD) -> MetricsProvider:
    """The provider ``canary.metrics_provider`` names."""
    if params.metrics_provider == "prometheus" and params.prometheus_url:
        return PrometheusProvider(
            params.prometheus_url,
            environment,
            labels=params.prometheus_labels,
            timeout_s=params.prometheus_timeout,
            scrape_wait_s=params.prometheus_scrape_wait,
        )
    return ScrapeProvider(target, environment)

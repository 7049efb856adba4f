"""Sample requests and a bounded load driver for loopback servers (canary analysis, smoke checks, benchmarks).

Rows are drawn from the training split's reference statistics (per-feature quantile bins), so the traffic looks
like the data the model was trained on and both slots see the same input distribution.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlrelease.core.modelcard import REFERENCE_FILE, ModelCard, ReferenceStats


def sample_rows(bundle_dir: Path, n: int, seed: int = 0) -> list[list[float]]:
    """``n`` rows of raw features, each feature drawn uniformly within a bin picked by its training fraction."""
    card = ModelCard.read(bundle_dir)
    stats = ReferenceStats.model_validate_json((bundle_dir / REFERENCE_FILE).read_text())
    # seeded pseudo-random rows for test traffic (not a security use)
    rng = random.Random(seed)  # noqa: S311  # nosec B311
    rows: list[list[float]] = []
    for _ in range(n):
        row = []
        for name in card.feature_names:
            ref = stats.features[name]
            k = rng.choices(range(len(ref.fractions)), weights=ref.fractions)[0] if sum(ref.fractions) > 0 else 0
            low, high = ref.edges[k], ref.edges[min(k + 1, len(ref.edges) - 1)]
            row.append(rng.uniform(low, high))
        rows.append(row)
    return rows


def predict_path(model_name: str) -> str:
    """The KServe V1 prediction route of the serving contract."""
    return f"/v1/models/{model_name}:predict"


@dataclass
class LoadResult:
    """What a load run saw: status codes (0 = transport error), versions that answered, latencies."""

    statuses: Counter[int] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, float, int, str]] = field(default_factory=list)  # (start, end, status, version)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        """No answer or a 5xx: the server's failure whatever the request."""
        return sum(n for code, n in self.statuses.items() if code == 0 or code >= 500)

    @property
    def rejected(self) -> int:
        """4xx but 429: the driver sends valid rows only, so for its requests a client error is the server's."""
        return sum(n for code, n in self.statuses.items() if 400 <= code < 500 and code != 429)

    @property
    def judged(self) -> int:
        """Requests that got an answer other than 429: the base of ``rejected``'s share."""
        return self.total - self.statuses.get(0, 0) - self.statuses.get(429, 0)

    @property
    def error_rate(self) -> float | None:
        """Share of requests that failed (transport error or 5xx); None when none were sent."""
        return self.failed / self.total if self.total else None

    def copy(self) -> LoadResult:
        """An independent copy (the driver's threads keep adding to the original)."""
        return LoadResult(Counter(self.statuses), Counter(self.versions), list(self.timeline))


class LoadDriver:
    """Background threads sending predictions to a loopback URL at a bounded rate until stopped or timed out."""

    def __init__(
        self,
        url: str,
        model_name: str,
        rows: list[list[float]],
        rps: float,
        concurrency: int = 4,
        max_seconds: float = 600.0,
        keep_timeline: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not url.startswith("http://127.0.0.1:"):
            raise ValueError(f"{url}: load is only ever sent to 127.0.0.1")
        self.url = url.rstrip("/") + predict_path(model_name)
        self.rows = rows
        self.interval = concurrency / rps
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.keep_timeline = keep_timeline
        self.headers = dict(headers or {})  # the API key when the servers require one
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> LoadDriver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> LoadResult:
        """Stop the threads; what they saw until now (a copy: a request still in flight cannot change it)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        with self._lock:
            return self.result.copy()

    def _run(self, index: int) -> None:
        import httpx

        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=10.0, headers=self.headers) as client:
            i = index
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                self._one(client, self.rows[i % len(self.rows)])
                i += self.concurrency
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _one(self, client: Any, row: list[float]) -> None:
        import httpx

        started = time.monotonic()
        try:
            resp = client.post(self.url, json={"instances": [row]})
            code, version = resp.status_code, str(_version_of(resp))
        except httpx.HTTPError:
            code, version = 0, ""
        with self._lock:
            self.result.statuses[code] += 1
            if version:
                self.result.versions[version] += 1
            if self.keep_timeline:
                self.result.timeline.append((started, time.monotonic(), code, version))


def _version_of(resp: Any) -> str:
    try:
        return str(resp.json().get("model_version", "")) if resp.status_code == 200 else ""
    except ValueError:
        return ""

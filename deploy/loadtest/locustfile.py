"""Locust users for the load-test gate: POST rows of the test split to the V1 predict endpoint.

Configured by environment variables set by deploy.loadtest.runner (so it also runs under plain ``locust -f``):
LOADTEST_CSV (test split), LOADTEST_TARGET (label column to drop), LOADTEST_MODEL (model name),
LOADTEST_BATCH (instances per request), LOADTEST_USER_RPS (requests/s per user, 0 = as fast as possible),
LOADTEST_HEADERS (a JSON object of extra request headers: the API key when the server requires one).
"""

from __future__ import annotations

import csv
import os
import random
from typing import Any

import orjson
from locust import constant, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser

_ROWS: list[list[float]] = []


def load_rows(path: str, target: str) -> list[list[float]]:
    """Feature rows of the test split (every column but the target), as floats."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if target not in header:
            raise ValueError(f"{path}: no target column {target!r} (columns: {header[:5]}...)")
        keep = [i for i, name in enumerate(header) if name != target]
        return [[float(row[i]) for i in keep] for row in reader if row]


def request_headers(raw: str | None) -> dict[str, str]:
    """Extra headers from LOADTEST_HEADERS (a JSON object of strings); a malformed value is an error, not ignored."""
    headers = orjson.loads(raw) if raw else {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError("LOADTEST_HEADERS must be a JSON object of header name -> string value")
    return headers


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    rows = load_rows(os.environ["LOADTEST_CSV"], os.environ.get("LOADTEST_TARGET", "target"))
    if not rows:
        raise ValueError("the test split has no rows")
    _ROWS.extend(rows)


def _wait_time() -> Any:
    rate = float(os.environ.get("LOADTEST_USER_RPS", "0"))
    return constant_throughput(rate) if rate > 0 else constant(0)


class PredictUser(FastHttpUser):
    """One client posting random test rows and checking every answer."""

    wait_time = _wait_time()

    def on_start(self) -> None:
        self._path = f"/v1/models/{os.environ.get('LOADTEST_MODEL', 'model')}:predict"
        self._batch = int(os.environ.get("LOADTEST_BATCH", "1"))
        self._rng = random.Random()  # noqa: S311 - payload sampling, not security
        self._headers = {**request_headers(os.environ.get("LOADTEST_HEADERS")), "Content-Type": "application/json"}

    @task
    def predict(self) -> None:
        instances = self._rng.sample(_ROWS, min(self._batch, len(_ROWS)))
        body = orjson.dumps({"instances": instances})
        with self.client.post(
            self._path,
            data=body.decode(),
            headers=self._headers,
            name="predict",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            predictions = orjson.loads(response.content or b"{}").get("predictions")
            if not isinstance(predictions, list) or len(predictions) != len(instances):
                response.failure("response has no prediction per instance")

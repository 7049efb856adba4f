"""Prediction for the model server: the two protocols, the served model with its batcher and drift window, and
the fast path's pending answer.

The ASGI application (deploy/serving/app.py) routes requests here; nothing here imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from deploy.serving import responses
from deploy.serving.asgi import JSON, Response, error_response
from deploy.serving.batcher import MicroBatcher, Outcome, RowErrors, Waiter
from deploy.serving.breaker import CLOSED, CircuitBreaker
from deploy.serving.config import ServingSettings
from deploy.serving.drift import DriftMonitor
from deploy.serving.fastpath import INTERNAL_ERROR
from deploy.serving.metrics import ServerMetrics
from deploy.serving.model import LoadedModel, centre_row, set_threads
from deploy.serving.payload import ClientError, parse_v1, parse_v2

log = logging.getLogger("deploy.serving.app")  # the server's log lines keep the name they had before the split


@dataclass(frozen=True, slots=True)
class Api:
    """One prediction protocol: its metrics label, body parser and answer builder.

    The parser returns the rows and what else the answer needs from the request (V2: its id and the outputs
    it asks for; V1: nothing), which is handed to ``answer`` with the probabilities.
    """

    label: str
    parse: Callable[[bytes, list[str], int], tuple[np.ndarray, Any]]
    answer: Callable[[LoadedModel, np.ndarray, Any], bytes]


V1 = Api(
    "/v1/models/{name}:predict",
    lambda body, names, limit: (parse_v1(body, names, limit), None),
    lambda model, probs, _: responses.predict_v1(model, probs),
)
V2 = Api("/v2/models/{name}/infer", parse_v2, responses.infer_v2)


def plain_name(name: str) -> bool:
    """A model name as the routes take it: no further path segment or verb (a trailing slash is another path)."""
    return "/" not in name and ":" not in name


def prediction_route(path: bytes) -> tuple[Api, str] | None:
    """(api, model name) for a prediction path as the fast path sees it (raw bytes), else None."""
    if path.startswith(b"/v1/models/") and path.endswith(b":predict"):
        api, name = V1, path[11:-8].decode("ascii")
    elif path.startswith(b"/v2/models/") and path.endswith(b"/infer"):
        api, name = V2, path[11:-6].decode("ascii")
    else:
        return None
    return (api, name) if plain_name(name) else None


def non_finite_output(bad_rows: np.ndarray) -> ClientError:
    """The 422 for rows the model answered with NaN or Inf: finite inputs so far out of the training range that
    standardising them overflows float32 (1e37 over a feature scale of 0.003, say) must not get a made-up class."""
    rows = bad_rows.tolist()
    named = ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
    return ClientError(
        422,
        "non_finite_output",
        f"row {named} of the request (counting from 0): the model's output is NaN or Inf for these values; they "
        "are too far out of the range it was trained on for its arithmetic (check the units and scale of each "
        "feature)",
    )


MAX_RETRY_AFTER_S = 30  # an overload estimate says little about more than the next half minute


def overloaded(wait: float, budget_ms: float) -> ClientError:
    """The 503 for a prediction that would wait ``wait`` seconds for the model, over the queue budget."""
    return ClientError(
        503,
        "overloaded",
        f"the server is overloaded: this request would wait about {wait * 1000:.0f} ms for the model, over the "
        f"{budget_ms:g} ms budget (MLRELEASE_MAX_QUEUE_MS); retry shortly, or at another replica",
        headers=[(b"retry-after", str(max(1, min(MAX_RETRY_AFTER_S, math.ceil(wait)))).encode())],
    )


def circuit_open(breaker: CircuitBreaker) -> ClientError:
    """The 503 for a prediction refused while the model's circuit breaker is open."""
    return ClientError(
        503,
        "circuit_open",
        f"the model failed {breaker.threshold} calls in a row, so the server stops calling it for "
        f"{breaker.reset_s:g} s and then tries one request (MLRELEASE_BREAKER_FAILURES, MLRELEASE_BREAKER_RESET_S); "
        "retry later, or at another replica",
        headers=[(b"retry-after", str(breaker.retry_after()).encode())],
    )


class _Ignored:
    """The Sink of the breaker's probe: its outcome reaches the breaker through the model call, nobody else."""

    def deliver(self, outcome: Outcome) -> None:
        """Nothing to answer."""


IGNORED = _Ignored()


class Serving:
    """A loaded model with its batcher, drift window and circuit breaker; counts in-flight requests so a swap can
    retire it."""

    def __init__(self, model: LoadedModel, settings: ServingSettings, metrics: ServerMetrics) -> None:
        self.model = model
        self.metrics = metrics
        self.names = model.card.feature_names
        threads = partial(set_threads, settings.torch_threads)
        inline = model.batch_ms <= settings.inline_max_batch_ms
        log.info("version %s: model calls run %s", model.version, "inline" if inline else "on the model thread")
        self.max_queue_ms = settings.max_queue_ms
        self.batcher = MicroBatcher(
            self.predict,
            settings.max_batch_size,
            metrics.record_batch,
            threads,
            inline,
            max_wait_s=settings.max_queue_ms / 1000,
            batch_s=model.batch_ms / 1000 if math.isfinite(model.batch_ms) else 0.0,  # the warm-up's largest batch
        )
        self.breaker = CircuitBreaker(
            settings.breaker_failures, settings.breaker_reset_s, on_change=metrics.breaker_changed
        )
        self.drift = (
            DriftMonitor(model.reference, self.names, settings.drift_window) if model.reference is not None else None
        )
        self.metadata_v1 = responses.metadata_v1(model)
        self.metadata_v2 = responses.metadata_v2(model)
        self.active = 0
        self._drained: asyncio.Event | None = None
        self._probe_rows = centre_row(model.card)[None, :]

    def admit(self) -> None:
        """A 503 overloaded when a prediction would wait past the queue budget; both paths ask before parsing the
        body (the estimate does not depend on it), so an overloaded server spends nothing more on the request."""
        wait = self.batcher.overloaded()
        if wait:
            self.metrics.shed.inc()
            raise overloaded(wait, self.max_queue_ms)

    def enqueue(self, rows: np.ndarray, waiter: Waiter) -> None:
        """Queue ``rows`` for the model (both paths come here once the body is parsed), unless the circuit breaker
        is open (503 circuit_open): asked last, since it may hand this request the half-open probe."""
        breaker = self.breaker
        if breaker.state is not CLOSED and breaker.allow():  # (closed, the usual case: no call)
            raise circuit_open(breaker)
        self.batcher.enqueue(rows, waiter)

    def submit(self, rows: np.ndarray) -> asyncio.Future[np.ndarray]:
        """``enqueue`` with a future for the ASGI path to await."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.enqueue(rows, future)
        return future

    def probe(self) -> None:
        """While the breaker is open and due for a trial, run the training-mean row as its half-open probe: /ready
        answers 503 meanwhile, so a balancer sends this replica no request that could close it otherwise."""
        if self.breaker.closed or self.breaker.allow():
            return
        with contextlib.suppress(RuntimeError):  # a batcher closed by a swap: that model is leaving anyway
            self.batcher.enqueue(self._probe_rows, IGNORED)

    def call_model(self, batch: np.ndarray) -> np.ndarray:
        """The model call, its outcome told to the circuit breaker (NaN rows are the model working: a success)."""
        try:
            probs = self.model.predict(batch)
        except Exception:
            self.breaker.failure()
            raise
        self.breaker.success()
        return probs

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """One model call for a whole coalesced batch, with its drift window and class counts.

        Rows answered with NaN or Inf are not answered: the batcher gives the requests holding them a 422 and the
        others, batched with them, their slices of this same call; only those are counted.
        """
        probs = self.call_model(batch)
        if not math.isfinite(probs.sum()):  # one reduction: NaN or Inf anywhere makes the sum non-finite
            bad = ~np.isfinite(probs).all(axis=1)
            raise RowErrors(
                probs, bad, non_finite_output, lambda answered: self._record(batch[answered], probs[answered])
            )
        self._record(batch, probs)
        return probs

    def _record(self, batch: np.ndarray, probs: np.ndarray) -> None:
        """Rows answered: into the drift window and the predicted-class counts."""
        if self.drift is not None:
            self.drift.observe(batch)
        self.metrics.record_classes(self.model.version, self.model.card.classes, probs.argmax(axis=1))

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0 and self._drained is not None:
            self._drained.set()

    async def retire(self) -> None:
        """Wait for requests that started on this model, then stop its batcher."""
        if self.active:
            self._drained = asyncio.Event()
            await self._drained.wait()
        await self.batcher.close()


class Batched:
    """A fast-path prediction waiting for its micro-batch (a batcher Sink); ``finish()`` builds the answer.

    The callback usually closes over this object, so it is dropped once called (or never stored when the outcome
    is already in): a reference cycle per request would leave about ten objects a request to the cyclic garbage
    collector, whose collections then stall the event loop for milliseconds.
    """

    __slots__ = ("api", "outcome", "ready", "request", "serving")

    def __init__(self, api: Api, serving: Serving, request: Any) -> None:
        self.api = api
        self.serving = serving
        self.request = request
        self.outcome: np.ndarray | BaseException | None = None
        self.ready: Callable[[], None] | None = None

    def attach(self, ready: Callable[[], None]) -> None:
        """Run ``ready`` once the outcome is in (on the next loop step if it already is: never inside the parser)."""
        if self.outcome is not None:
            asyncio.get_running_loop().call_soon(ready)
        else:
            self.ready = ready

    def deliver(self, outcome: np.ndarray | BaseException) -> None:
        self.outcome = outcome
        ready, self.ready = self.ready, None
        if ready is not None:
            ready()

    def finish(self) -> Response:
        serving = self.serving
        serving.leave()
        outcome = self.outcome
        if isinstance(outcome, ClientError):
            return error_response(outcome)  # not raised: a traceback would tie this request into a cycle
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is None:
                raise RuntimeError("finish() before the batch delivered")
            return 200, self.api.answer(serving.model, outcome, self.request), JSON
        except Exception:
            log.exception("internal error on POST %s", self.api.label)
            return INTERNAL_ERROR

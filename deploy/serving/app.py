"""The model server as a raw ASGI application: routing, auth, limits, micro-batched prediction, hot swap.

Raw ASGI (no framework, no per-request pydantic or pandas) keeps HTTP overhead near the bare ceiling;
every client mistake becomes a 4xx JSON error that names it, and only a real server fault is a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploy.serving import responses
from deploy.serving.batcher import MicroBatcher, RowErrors
from deploy.serving.config import ModelSource, ServingSettings
from deploy.serving.drift import DriftMonitor
from deploy.serving.fastpath import INTERNAL_ERROR
from deploy.serving.looplag import LoopLagMonitor
from deploy.serving.metrics import CONTENT_TYPE, ServerMetrics
from deploy.serving.model import LoadedModel, ModelLoadError, load_model, set_threads
from deploy.serving.openapi import build_openapi
from deploy.serving.payload import ClientError, loads_json, parse_v1, parse_v2
from deploy.serving.resolve import resolve
from deploy.serving.security import RateLimiter, client_address, presented_secret, secret_matches

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Response = tuple[int, bytes, Headers]
Handler = Callable[[Scope, Receive, str], Awaitable[Response]]

JSON: Headers = [(b"content-type", b"application/json")]


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


def check_content_type(headers: Headers) -> None:
    """Prediction bodies are JSON: anything else is a 415 that says what to send."""
    ctype = b""
    for key, value in headers:
        if key == b"content-type":
            ctype = value
    if ctype.split(b";", 1)[0].strip().lower() != b"application/json":
        raise ClientError(
            415,
            "unsupported_media_type",
            f"Content-Type {ctype.decode('latin-1')[:60]!r} is not supported; send 'Content-Type: application/json'",
        )


def error_response(exc: ClientError) -> Response:
    """A client mistake as the JSON answer both request paths send."""
    return exc.status, exc.body(), JSON + exc.headers


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


_UNSEEN = object()


def _plain_name(name: str) -> bool:
    """A model name as the routes take it: no further path segment or verb (a trailing slash is another path)."""
    return "/" not in name and ":" not in name


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


class Serving:
    """A loaded model with its batcher and drift window; counts in-flight requests so a swap can retire it."""

    def __init__(self, model: LoadedModel, settings: ServingSettings, metrics: ServerMetrics) -> None:
        self.model = model
        self.metrics = metrics
        self.names = model.card.feature_names
        threads = partial(set_threads, settings.torch_threads)
        inline = model.batch_ms <= settings.inline_max_batch_ms
        log.info("version %s: model calls run %s", model.version, "inline" if inline else "on the model thread")
        self.batcher = MicroBatcher(self.predict, settings.max_batch_size, metrics.record_batch, threads, inline)
        self.drift = (
            DriftMonitor(model.reference, self.names, settings.drift_window) if model.reference is not None else None
        )
        self.metadata_v1 = responses.metadata_v1(model)
        self.metadata_v2 = responses.metadata_v2(model)
        self.active = 0
        self._drained: asyncio.Event | None = None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """One model call for a whole coalesced batch, with its drift window and class counts.

        Rows answered with NaN or Inf are not answered: the batcher gives the requests holding them a 422 and the
        others, batched with them, their slices of this same call; only those are counted.
        """
        probs = self.model.predict(batch)
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


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


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


class ModelServer:
    """ASGI callable: ``uvicorn.run(ModelServer(settings), ...)``."""

    def __init__(self, settings: ServingSettings, source: ModelSource | None = None) -> None:
        self.settings = settings
        self.source = source or settings.source()
        self.metrics = ServerMetrics(lambda: self.current.drift if self.current else None)
        self.current: Serving | None = None
        self.load_error: str | None = None
        self.draining = False
        self.limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        self._trusted = frozenset(hop.strip() for hop in settings.trusted_proxies.split(",") if hop.strip())
        self._api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        admin = settings.admin_token.get_secret_value().encode() if settings.admin_token else None
        self._admin_token = admin if settings.enable_admin else None
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._routes: dict[bytes, tuple[Api, str] | None] = {}
        self._lag: LoopLagMonitor | None = None
        self._exact: dict[str, tuple[str, tuple[str, ...], Handler]] = {
            "/health": ("/health", ("GET",), self._health),
            "/ready": ("/ready", ("GET",), self._ready),
            "/v2/health/live": ("/v2/health/live", ("GET",), self._health),
            "/v2/health/ready": ("/v2/health/ready", ("GET",), self._ready),
            "/metrics": ("/metrics", ("GET",), self._metrics),
            "/openapi.json": ("/openapi.json", ("GET",), self._openapi),
            "/admin/reload": ("/admin/reload", ("POST",), self._admin_reload),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    # -- routing ---------------------------------------------------------------------------------------------
    def _route(self, path: str) -> tuple[str, tuple[str, ...], Handler | None, str]:
        exact = self._exact.get(path)
        if exact is not None:
            return exact[0], exact[1], exact[2], ""
        if path.startswith("/v1/models/"):
            rest = path[11:]
            if rest.endswith(":predict") and _plain_name(rest[:-8]):
                return V1.label, ("POST",), self._predict_v1, rest[:-8]
            if _plain_name(rest):
                return "/v1/models/{name}", ("GET",), self._metadata_v1, rest
        elif path.startswith("/v2/models/"):
            rest = path[11:]
            if rest.endswith("/infer") and _plain_name(rest[:-6]):
                return V2.label, ("POST",), self._infer_v2, rest[:-6]
            if rest.endswith("/ready") and _plain_name(rest[:-6]):
                return "/v2/models/{name}/ready", ("GET",), self._model_ready_v2, rest[:-6]
            if _plain_name(rest):
                return "/v2/models/{name}", ("GET",), self._metadata_v2, rest
        return "other", (), None, ""  # e.g. a trailing slash, or /versions/N/infer: a 404 that names the path

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        label, methods, handler, name = self._route(scope["path"])
        try:
            if handler is None:
                raise ClientError(404, "not_found", f"no route {scope['path'][:100]!r}; see /openapi.json")
            if scope["method"] not in methods:
                raise ClientError(
                    405,
                    "method_not_allowed",
                    f"{scope['method']} is not allowed on {label}; use {', '.join(methods)}",
                    headers=[(b"allow", ", ".join(methods).encode())],
                )
            status, body, headers = await handler(scope, receive, name)
        except ClientError as exc:
            status, body, headers = error_response(exc)
        except ClientGone:
            self.metrics.record(label, 499, time.perf_counter() - start)
            return
        except Exception:
            log.exception("internal error on %s %s", scope["method"], label)
            status, body, headers = INTERNAL_ERROR
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self.metrics.record(label, status, time.perf_counter() - start)

    # -- request checks --------------------------------------------------------------------------------------
    def _limit(self, headers: Headers, peer: str | None) -> None:
        """The per-client rate limit, before any credential is checked: requests with a wrong key or token count
        too, so guessing one, or flooding the comparison, is limited like any other traffic."""
        if self.limiter.enabled:
            wait = self.limiter.retry_after(client_address(peer or "unknown", headers, self._trusted))
            if wait:
                raise ClientError(
                    429,
                    "rate_limited",
                    f"rate limit of {self.limiter.rate:g} requests/s exceeded; retry in {wait:.2f} s",
                    headers=[(b"retry-after", str(int(wait) + 1).encode())],
                )

    def _begin(self, headers: Headers, peer: str | None, name: str) -> Serving:
        """Rate limit, auth, readiness and model name; marks the request in flight on the current model."""
        self._limit(headers, peer)
        if self._api_key is not None and not secret_matches(presented_secret(headers, True), self._api_key):
            raise ClientError(
                401,
                "unauthorized",
                "missing or wrong API key; send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                headers=[(b"www-authenticate", b"Bearer")],
            )
        serving = self._serving(name)
        serving.active += 1
        return serving

    def _serving(self, name: str) -> Serving:
        current = self.current
        if current is None:
            reason = self.load_error or "the model is still loading"
            raise ClientError(503, "not_ready", f"no model is being served: {reason}", headers=[(b"retry-after", b"1")])
        if name != current.model.name:
            raise ClientError(
                404,
                "unknown_model",
                f"model {name[:100]!r} is not served here; this server serves {current.model.name!r}",
            )
        return current

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, after checking Content-Type and the size limit (413) before buffering it."""
        limit = self.settings.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                raise ClientError(413, "body_too_large", f"body of {int(value)} bytes exceeds the limit of {limit}")
        check_content_type(scope["headers"])
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ClientError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- prediction ------------------------------------------------------------------------------------------
    async def _run(self, serving: Serving, rows: np.ndarray) -> np.ndarray:
        return await serving.batcher.predict(rows)

    async def _predict(self, api: Api, scope: Scope, receive: Receive, name: str) -> Response:
        serving = self._begin(scope["headers"], _peer(scope), name)
        try:
            body = await self._read_body(scope, receive)
            rows, request = api.parse(body, serving.names, self.settings.max_batch_size)
            probs = await self._run(serving, rows)
        finally:
            serving.leave()
        return 200, api.answer(serving.model, probs, request), JSON

    async def _predict_v1(self, scope: Scope, receive: Receive, name: str) -> Response:
        return await self._predict(V1, scope, receive, name)

    async def _infer_v2(self, scope: Scope, receive: Receive, name: str) -> Response:
        return await self._predict(V2, scope, receive, name)

    # -- the same two routes for the protocol's fast path (deploy/serving/fastpath.py) ---------------------
    @property
    def max_body_bytes(self) -> int:
        return self.settings.max_body_bytes

    def fast_route(self, path: bytes) -> tuple[Api, str] | None:
        """(api, model name) for a prediction path, else None (the request goes through ASGI, which also answers
        the paths that only look like one, such as /v2/models/NAME/versions/N/infer). Short paths are remembered:
        a server sees a handful, and a client sending ever new ones empties the memory, it does not grow it."""
        routes = self._routes
        route = routes.get(path, _UNSEEN)
        if route is not _UNSEEN:
            return route  # type: ignore[return-value]
        route = self._fast_route(path)
        if len(path) <= 256:
            if len(routes) >= 256:
                routes.clear()
            routes[path] = route
        return route

    @staticmethod
    def _fast_route(path: bytes) -> tuple[Api, str] | None:
        if path.startswith(b"/v1/models/") and path.endswith(b":predict"):
            api, name = V1, path[11:-8].decode("ascii")
        elif path.startswith(b"/v2/models/") and path.endswith(b"/infer"):
            api, name = V2, path[11:-6].decode("ascii")
        else:
            return None
        return (api, name) if _plain_name(name) else None

    def fast_call(self, route: tuple[Api, str], headers: Headers, peer: str | None, body: bytes) -> Response | Batched:
        """The ASGI path's checks in the same order, then the batch: an error Response now, or the pending answer."""
        api, name = route
        try:
            serving = self._begin(headers, peer, name)
        except ClientError as exc:
            return error_response(exc)
        try:
            check_content_type(headers)
            rows, request = api.parse(body, serving.names, self.settings.max_batch_size)
            pending = Batched(api, serving, request)
            serving.batcher.enqueue(rows, pending)
            return pending
        except ClientError as exc:
            serving.leave()
            return error_response(exc)
        except Exception:
            serving.leave()
            log.exception("internal error on POST %s", api.label)
            return INTERNAL_ERROR

    def fast_record(self, route: tuple[Api, str], status: int, seconds: float) -> None:
        self.metrics.record(route[0].label, status, seconds, fast=True)

    async def _metadata_v1(self, scope: Scope, receive: Receive, name: str) -> Response:
        serving = self._begin(scope["headers"], _peer(scope), name)
        serving.leave()
        return 200, serving.metadata_v1, JSON

    async def _metadata_v2(self, scope: Scope, receive: Receive, name: str) -> Response:
        serving = self._begin(scope["headers"], _peer(scope), name)
        serving.leave()
        return 200, serving.metadata_v2, JSON

    async def _model_ready_v2(self, scope: Scope, receive: Receive, name: str) -> Response:
        """Open Inference Protocol model readiness: 200 once this model serves (503 while loading, 404 another)."""
        serving = self._begin(scope["headers"], _peer(scope), name)
        serving.leave()
        return 200, orjson.dumps({"name": serving.model.name, "ready": True}), JSON

    # -- operational endpoints -------------------------------------------------------------------------------
    async def _health(self, scope: Scope, receive: Receive, name: str) -> Response:
        return 200, b'{"status":"ok"}', JSON

    async def _ready(self, scope: Scope, receive: Receive, name: str) -> Response:
        current = self.current
        if current is None or self.draining:
            reason = "draining" if self.draining else (self.load_error or "loading")
            return (
                503,
                orjson.dumps(
                    {
                        "ready": False,
                        "reason": reason,
                        "failed": self.load_error is not None and current is None,
                    }
                ),
                JSON,
            )
        model = current.model
        return (
            200,
            orjson.dumps(
                {
                    "ready": True,
                    "model_name": model.name,
                    "model_version": model.version,
                    "sha256": model.sha256,
                }
            ),
            JSON,
        )

    async def _metrics(self, scope: Scope, receive: Receive, name: str) -> Response:
        return 200, self.metrics.render(), [(b"content-type", CONTENT_TYPE.encode())]

    async def _openapi(self, scope: Scope, receive: Receive, name: str) -> Response:
        model = self.current.model if self.current else None
        return 200, orjson.dumps(build_openapi(model, self.settings)), JSON

    # -- hot swap --------------------------------------------------------------------------------------------
    async def _admin_reload(self, scope: Scope, receive: Receive, name: str) -> Response:
        if self._admin_token is None:
            raise ClientError(
                404,
                "admin_disabled",
                "admin endpoints are off; set MLRELEASE_ENABLE_ADMIN=true and MLRELEASE_ADMIN_TOKEN",
            )
        self._limit(scope["headers"], _peer(scope))
        if not secret_matches(presented_secret(scope["headers"], False), self._admin_token):
            raise ClientError(
                401,
                "unauthorized",
                "admin endpoints need 'Authorization: Bearer ADMIN_TOKEN'",
                headers=[(b"www-authenticate", b"Bearer")],
            )
        body = await self._read_body(scope, receive)
        source = reload_source(loads_json(body) if body.strip() else {})
        return 200, orjson.dumps(await self.reload(source)), JSON

    def _load(self, source: ModelSource) -> LoadedModel:
        """Resolve, verify, load and warm a model (runs in a thread, off the event loop).

        A registry version is downloaded into a scratch folder that goes once the model is in memory: nothing
        reads the bundle after the load, and a long-lived server (or one per test) would otherwise leave a copy
        of every version it ever loaded in the temp folder.
        """
        with tempfile.TemporaryDirectory(prefix="mlrelease-serving-") as scratch:
            bundle = resolve(source, Path(scratch))
            return load_model(
                bundle.folder,
                version=bundle.version,
                expected_sha256=bundle.expected_sha256,
                max_batch=self.settings.max_batch_size,
                source=source.describe(),
                runtime=self.settings.runtime,
            )

    async def reload(self, source: ModelSource | None = None) -> dict[str, Any]:
        """Load, warm and check another model, then swap it in; on failure the old model keeps serving."""
        if self._reload_lock.locked():
            raise ClientError(409, "reload_in_progress", "another reload is running; retry when it finishes")
        async with self._reload_lock:
            source = source or self.source
            previous = self.current
            try:
                model = await asyncio.get_running_loop().run_in_executor(None, self._load, source)
                if previous is not None and model.name != previous.model.name:
                    raise ModelLoadError(
                        f"bundle serves model {model.name!r}, this server serves "
                        f"{previous.model.name!r}; start a new server for another model"
                    )
            except Exception as exc:
                self.metrics.reloads.labels("failed").inc()
                kept = previous.model.version if previous else "none"
                log.error("reload from %s failed, still serving version %s: %s", source.describe(), kept, exc)
                raise ClientError(422, "load_failed", f"{exc} (still serving version {kept})") from exc
            self._install(model)
            self.source = source
            self.metrics.reloads.labels("ok").inc()
            if previous is not None:
                self._spawn(self._retire(previous))
            return {
                "model_name": model.name,
                "model_version": model.version,
                "sha256": model.sha256,
                "previous_version": previous.model.version if previous else None,
            }

    def _install(self, model: LoadedModel) -> None:
        """Atomic swap: one reference assignment on the event loop thread; new requests see the new model."""
        self.current = Serving(model, self.settings, self.metrics)
        gc.collect()
        gc.freeze()  # the model and modules are long-lived: keep them out of every later collection
        self.load_error = None
        self.metrics.set_model(model.name, model.version, model.sha256)

    async def _retire(self, previous: Serving) -> None:
        """Let the swapped-out model finish its requests, then free it.

        Its install froze it into the collector's permanent generation, where the cycles it holds (its batcher
        calls back into it, and a TorchScript module has its own) would keep the module and its drift window for
        the life of the process: one model more per swap. Unfreezing and collecting once per swap releases it and
        freezes the survivors again, at the cost of one full collection (about 0.1 s of loop here) per swap.
        """
        await previous.retire()
        del previous
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifespan --------------------------------------------------------------------------------------------
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Start loading the model in the background (/health at once, /ready once warm); hook SIGHUP; sample the
        event-loop lag."""
        set_threads(self.settings.torch_threads)
        self._spawn(self._initial_load())
        if self.settings.loop_lag_interval_ms:
            self._lag = LoopLagMonitor(self.metrics.loop_lag.observe, self.settings.loop_lag_interval_ms / 1000)
            self._lag.start(asyncio.get_running_loop())
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)

    async def _initial_load(self) -> None:
        try:
            await self.reload(self.source)
        except ClientError as exc:
            self.load_error = exc.message
            log.error("not ready: %s", exc.message)

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.source.describe())
        self._spawn(self._reload_logged())

    async def _reload_logged(self) -> None:
        try:
            result = await self.reload()
            log.info("reloaded: now serving version %s", result["model_version"])
        except ClientError as exc:
            log.error("reload failed: %s", exc.message)

    async def shutdown(self) -> None:
        """Mark not ready, let in-flight batches finish, stop the worker thread."""
        self.draining = True
        if self._lag is not None:
            self._lag.stop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self.current is not None:
            await self.current.retire()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=self.settings.graceful_timeout_s)


class ReloadRequest(BaseModel):
    """Body of POST /admin/reload (not on the hot path, so a pydantic model is fine here)."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path | None = None
    model_uri: str | None = Field(default=None, pattern=r"^models:/[^/@]+(@[\w.-]+|/\d+)$")
    model_version: str | None = Field(default=None, pattern=r"^[\w.-]{1,64}$")


def reload_source(doc: Any) -> ModelSource | None:
    """Parse the admin reload body: {} (configured source), {"model_dir": ...} or {"model_uri": ...}."""
    if type(doc) is not dict:
        raise ClientError(400, "bad_body", 'reload body must be an object: {"model_dir": DIR} or {"model_uri": URI}')
    try:
        request = ReloadRequest.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ClientError(422, "bad_body", f"bad reload body: {problems}") from exc
    if request.model_dir is None and request.model_uri is None:
        if request.model_version is not None:
            raise ClientError(422, "bad_body", "model_version needs model_dir or model_uri")
        return None
    if request.model_dir is not None and request.model_uri is not None:
        raise ClientError(422, "bad_body", "give either model_dir or model_uri, not both")
    return ModelSource(model_dir=request.model_dir, model_uri=request.model_uri, version=request.model_version)

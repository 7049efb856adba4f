"""The model server as a raw ASGI application: routing, auth, limits, micro-batched prediction, hot swap.

Raw ASGI (no framework, no per-request pydantic or pandas) keeps HTTP overhead near the bare ceiling;
every client mistake becomes a 4xx JSON error that names it, and only a real server fault is a 500.
The parts live beside it: ASGI plumbing in asgi.py, the protocols and the served model in prediction.py,
the hot swap's checks, load and cleanup in admin.py; this module assembles them into the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from deploy.serving import admin
from deploy.serving.admin import ReloadRequest, reload_source
from deploy.serving.asgi import (
    JSON,
    ClientGone,
    Handler,
    Headers,
    Receive,
    Response,
    Scope,
    Send,
    check_content_type,
    error_response,
    peer,
    read_body,
)
from deploy.serving.config import ModelSource, ServingSettings
from deploy.serving.fastpath import INTERNAL_ERROR
from deploy.serving.grpc import GrpcStartError
from deploy.serving.looplag import LoopLagMonitor
from deploy.serving.metrics import CONTENT_TYPE, ServerMetrics
from deploy.serving.model import LoadedModel, ModelLoadError
from deploy.serving.openapi import build_openapi
from deploy.serving.payload import ClientError, loads_json
from deploy.serving.prediction import V1, V2, Api, Batched, Serving, non_finite_output, plain_name, prediction_route
from deploy.serving.security import RateLimiter, client_address, presented_secret, secret_matches
from deploy.serving.transport import ConnectionGuard

__all__ = [  # what other modules and tests import from here, and the names this module had before the split
    "JSON",
    "V1",
    "V2",
    "Api",
    "Batched",
    "ClientGone",
    "ModelServer",
    "ReloadRequest",
    "Serving",
    "check_content_type",
    "error_response",
    "non_finite_output",
    "reload_source",
]

if TYPE_CHECKING:
    from deploy.serving.grpc.server import GrpcEndpoint

log = logging.getLogger(__name__)

_UNSEEN = object()
GET = ("GET", "HEAD")  # HEAD wherever GET: the same status and headers, no body (uvicorn leaves it out)


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
        self.guard = ConnectionGuard(settings.header_timeout_s, settings.max_half_open_per_client, self._trusted)
        self.metrics.watch_connections(self.guard)
        self._api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self._protect_metadata = settings.protect_metadata and self._api_key is not None
        admin = settings.admin_token.get_secret_value().encode() if settings.admin_token else None
        self._admin_token = admin if settings.enable_admin else None
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._routes: dict[bytes, tuple[Api, str] | None] = {}
        self._lag: LoopLagMonitor | None = None
        self._grpc: GrpcEndpoint | None = None  # the Open Inference Protocol over gRPC, when MLRELEASE_GRPC_PORT is set
        self._grpc_stop: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exact: dict[str, tuple[str, tuple[str, ...], Handler]] = {
            "/health": ("/health", GET, self._health),
            "/ready": ("/ready", GET, self._ready),
            "/v2/health/live": ("/v2/health/live", GET, self._health),
            "/v2/health/ready": ("/v2/health/ready", GET, self._ready),
            "/metrics": ("/metrics", GET, self._metrics),
            "/openapi.json": ("/openapi.json", GET, self._openapi),
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
            if rest.endswith(":predict") and plain_name(rest[:-8]):
                return V1.label, ("POST",), self._predict_v1, rest[:-8]
            if plain_name(rest):
                return "/v1/models/{name}", GET, self._metadata_v1, rest
        elif path.startswith("/v2/models/"):
            rest = path[11:]
            if rest.endswith("/infer") and plain_name(rest[:-6]):
                return V2.label, ("POST",), self._infer_v2, rest[:-6]
            if rest.endswith("/ready") and plain_name(rest[:-6]):
                return "/v2/models/{name}/ready", GET, self._model_ready_v2, rest[:-6]
            if plain_name(rest):
                return "/v2/models/{name}", GET, self._metadata_v2, rest
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

    def _authorize(self, headers: Headers, peer: str | None) -> None:
        """Rate limit, then the API key when one is set (a 401 without it)."""
        self._limit(headers, peer)
        if self._api_key is not None and not secret_matches(presented_secret(headers, True), self._api_key):
            raise ClientError(
                401,
                "unauthorized",
                "missing or wrong API key; send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                headers=[(b"www-authenticate", b"Bearer")],
            )

    def _begin(self, headers: Headers, peer: str | None, name: str) -> Serving:
        """Rate limit, auth, readiness and model name; marks the request in flight on the current model."""
        self._authorize(headers, peer)
        serving = self._serving(name)
        serving.active += 1
        return serving

    def begin(self, headers: Headers, peer: str | None, name: str) -> Serving:
        """``_begin`` for another protocol's adapter (deploy/serving/grpc): the same checks and the same errors."""
        return self._begin(headers, peer, name)

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

    # -- prediction ------------------------------------------------------------------------------------------
    async def _run(self, serving: Serving, rows: np.ndarray) -> np.ndarray:
        return await serving.submit(rows)

    async def _predict(self, api: Api, scope: Scope, receive: Receive, name: str) -> Response:
        serving = self._begin(scope["headers"], peer(scope), name)
        try:
            serving.admit()
            body = await read_body(scope, receive, self.settings.max_body_bytes)
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

    _fast_route = staticmethod(prediction_route)

    def fast_call(self, route: tuple[Api, str], headers: Headers, peer: str | None, body: bytes) -> Response | Batched:
        """The ASGI path's checks in the same order, then the batch: an error Response now, or the pending answer."""
        api, name = route
        try:
            serving = self._begin(headers, peer, name)
        except ClientError as exc:
            return error_response(exc)
        try:
            serving.admit()
            check_content_type(headers)
            rows, request = api.parse(body, serving.names, self.settings.max_batch_size)
            pending = Batched(api, serving, request)
            serving.enqueue(rows, pending)
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
        serving = self._begin(scope["headers"], peer(scope), name)
        serving.leave()
        return 200, serving.metadata_v1, JSON

    async def _metadata_v2(self, scope: Scope, receive: Receive, name: str) -> Response:
        serving = self._begin(scope["headers"], peer(scope), name)
        serving.leave()
        return 200, serving.metadata_v2, JSON

    async def _model_ready_v2(self, scope: Scope, receive: Receive, name: str) -> Response:
        """Open Inference Protocol model readiness: 200 once this model serves (503 while loading, 404 another)."""
        serving = self._begin(scope["headers"], peer(scope), name)
        serving.leave()
        return 200, orjson.dumps({"name": serving.model.name, "ready": True}), JSON

    # -- operational endpoints -------------------------------------------------------------------------------
    async def _health(self, scope: Scope, receive: Receive, name: str) -> Response:
        return 200, b'{"status":"ok"}', JSON

    def readiness(self) -> tuple[str, bool] | None:
        """None while the model serves, else (why not, whether loading failed for good); with the circuit breaker
        open it also starts the breaker's probe when one is due (a balancer sends an unready replica no traffic to
        do it). /ready and gRPC's ServerReady both ask here."""
        current = self.current
        if current is None or self.draining:
            reason = "draining" if self.draining else (self.load_error or "loading")
            return reason, self.load_error is not None and current is None
        if not current.breaker.closed:
            current.probe()
            breaker = current.breaker
            return (
                f"circuit open: the model failed {breaker.threshold} calls in a row; it is tried again with one "
                f"request every {breaker.reset_s:g} s",
                False,
            )
        return None

    async def _ready(self, scope: Scope, receive: Receive, name: str) -> Response:
        """200 while the model serves; 503 while loading, draining or with the circuit breaker open."""
        unready = self.readiness()
        if unready is not None:
            return self._not_ready(*unready)
        current = self.current
        assert current is not None  # readiness() said it serves
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

    @staticmethod
    def _not_ready(reason: str, failed: bool) -> Response:
        return 503, orjson.dumps({"ready": False, "reason": reason, "failed": failed}), JSON

    def _metadata_guard(self, scope: Scope) -> None:
        """With MLRELEASE_PROTECT_METADATA and an API key, /metrics and /openapi.json need the key (rate-limited
        first, like predictions); otherwise they are open, so Prometheus scrapes without one."""
        if self._protect_metadata:
            self._authorize(scope["headers"], peer(scope))

    async def _metrics(self, scope: Scope, receive: Receive, name: str) -> Response:
        self._metadata_guard(scope)
        return 200, self.metrics.render(), [(b"content-type", CONTENT_TYPE.encode())]

    async def _openapi(self, scope: Scope, receive: Receive, name: str) -> Response:
        self._metadata_guard(scope)
        model = self.current.model if self.current else None
        return 200, orjson.dumps(build_openapi(model, self.settings)), JSON

    # -- hot swap --------------------------------------------------------------------------------------------
    async def _admin_reload(self, scope: Scope, receive: Receive, name: str) -> Response:
        token = admin.enabled_token(self._admin_token)  # a 404 while the admin endpoints are off
        self._limit(scope["headers"], peer(scope))
        admin.check_admin(scope["headers"], token)
        body = await read_body(scope, receive, self.settings.max_body_bytes)
        source = reload_source(loads_json(body) if body.strip() else {})
        return 200, orjson.dumps(await self.reload(source)), JSON

    async def reload(self, source: ModelSource | None = None) -> dict[str, Any]:
        """Load, warm and check another model, then swap it in; on failure the old model keeps serving."""
        if self._reload_lock.locked():
            raise ClientError(409, "reload_in_progress", "another reload is running; retry when it finishes")
        async with self._reload_lock:
            source = source or self.source
            previous = self.current
            try:
                model = await asyncio.get_running_loop().run_in_executor(None, admin.load_source, source, self.settings)
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
                self._spawn(admin.free_retired(previous))
            return {
                "model_name": model.name,
                "model_version": model.version,
                "sha256": model.sha256,
                "previous_version": previous.model.version if previous else None,
            }

    def _install(self, model: LoadedModel) -> None:
        """Atomic swap: one reference assignment on the event loop thread; new requests see the new model."""
        self.current = Serving(model, self.settings, self.metrics)
        self.metrics.breaker_open.set(0)  # a new model starts with its breaker closed
        gc.collect()
        gc.freeze()  # the model and modules are long-lived: keep them out of every later collection
        self.load_error = None
        self.metrics.set_model(model.name, model.version, model.sha256)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifespan --------------------------------------------------------------------------------------------
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except GrpcStartError as exc:  # a port taken, say: one line, and uvicorn exits (no traceback)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Start loading the model in the background (/health at once, /ready once warm); hook SIGHUP; sample the
        event-loop lag; serve gRPC too when MLRELEASE_GRPC_PORT is set."""
        self._loop = asyncio.get_running_loop()
        if self.settings.grpc_port is not None:  # first: a taken port ends the start before torch is imported
            from deploy.serving.grpc.server import start_grpc  # grpcio and the generated messages: only when on

            self._grpc = await start_grpc(self, self.settings.host, self.settings.grpc_port)
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
            if self.settings.exit_on_load_failure:
                log.error("exiting: no model to serve (MLRELEASE_EXIT_ON_LOAD_FAILURE)")
                os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own graceful exit
        finally:
            self._end_startup_turn()

    def _end_startup_turn(self) -> None:
        """Let the slot's next replica load (it waits on the start-up lock this process inherited); once, at the end
        of the first load."""
        if self.settings.startup_lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.settings.startup_lock_fd)

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.source.describe())
        self._spawn(self._reload_logged())

    async def _reload_logged(self) -> None:
        try:
            result = await self.reload()
            log.info("reloaded: now serving version %s", result["model_version"])
        except ClientError as exc:
            log.error("reload failed: %s", exc.message)

    def begin_drain(self) -> None:
        """SIGTERM/SIGINT: not ready from now on; gRPC refuses new model calls (UNAVAILABLE), answers those it
        holds and stops, while uvicorn drains HTTP; safe to call from a signal handler."""
        self.draining = True
        if self._grpc is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_grpc)

    def _stop_grpc(self) -> asyncio.Future[None] | None:
        """Start the gRPC server's graceful stop once (grace: MLRELEASE_GRACEFUL_TIMEOUT_S); its future."""
        if self._grpc is not None and self._grpc_stop is None:
            self._grpc_stop = asyncio.ensure_future(self._grpc.stop(self.settings.graceful_timeout_s))
        return self._grpc_stop

    async def shutdown(self) -> None:
        """Mark not ready, let in-flight gRPC calls and batches finish, stop the worker thread."""
        self.draining = True
        stopping = self._stop_grpc()
        if stopping is not None:
            await stopping
        if self._lag is not None:
            self._lag.stop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self.current is not None:
            await self.current.retire()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=self.settings.graceful_timeout_s)

"""``inference.GRPCInferenceService`` on the HTTP server's own model, batcher, checks, auth and metrics.

Every call goes through the checks the HTTP routes use (rate limit, API key, readiness, model name, load shedding,
circuit breaker) and is counted in the same ``mlrelease_requests_total`` and latency histogram, under a route label
``grpc:`` + the HTTP route it mirrors, with the HTTP status the same request would get over HTTP. An error is the
HTTP error's message under the gRPC code of status.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any, NamedTuple, NoReturn, Protocol

import grpc
import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from grpc import aio

from deploy.serving.config import ServingSettings
from deploy.serving.grpc import status, tensors
from deploy.serving.grpc.v2 import grpc_predict_v2_pb2 as pb
from deploy.serving.metrics import ServerMetrics
from deploy.serving.payload import ClientError
from deploy.serving.prediction import Serving

log = logging.getLogger("deploy.serving.app")  # the server's log lines, whichever protocol

#: metrics route labels: the HTTP route each call mirrors ("infer" keeps ModelInfer in the canary analysis' routes)
ROUTES = {
    "ServerLive": "grpc:/v2/health/live",
    "ServerReady": "grpc:/v2/health/ready",
    "ServerMetadata": "grpc:/v2",
    "ModelReady": "grpc:/v2/models/{name}/ready",
    "ModelMetadata": "grpc:/v2/models/{name}",
    "ModelInfer": "grpc:/v2/models/{name}/infer",
}
CANCELLED = 499  # the status the HTTP side counts for a client gone before its answer
HEALTH_CALLS = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})  # answered while draining too
Call = Callable[[Any, aio.ServicerContext], Awaitable[Message]]


class Undecodable(NamedTuple):
    """A request whose bytes are not its call's message: answered INVALID_ARGUMENT (grpcio itself says UNKNOWN)."""

    type_name: str
    error: str


def tolerant(message_type: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    """A request deserializer that hands malformed bytes to the call as Undecodable instead of failing it."""

    def parse(data: bytes) -> Message | Undecodable:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Undecodable(message_type.DESCRIPTOR.full_name, str(exc)[:200])

    return parse


class Host(Protocol):
    """What the service needs of the HTTP server (deploy.serving.app.ModelServer), without importing it."""

    settings: ServingSettings
    metrics: ServerMetrics
    current: Serving | None
    draining: bool

    def begin(self, headers: list[tuple[bytes, bytes]], peer: str | None, name: str) -> Serving: ...

    def readiness(self) -> tuple[str, bool] | None: ...


def _served(serving: Serving, version: str) -> None:
    """A NOT_FOUND for a version other than the one served (an empty version means whichever is served)."""
    if version and version != serving.model.version:
        raise ClientError(
            404,
            "unknown_model",
            f"version {version[:64]!r} of model {serving.model.name!r} is not served here; this server serves "
            f"version {serving.model.version!r} (or leave the version empty)",
        )


class InferenceService:
    """The five calls of the Open Inference Protocol (and ServerMetadata); repository calls stay UNIMPLEMENTED."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.max_batch = host.settings.max_batch_size
        try:
            version = metadata.version("mlrelease")
        except metadata.PackageNotFoundError:
            version = "unknown"
        self._server_metadata = pb.ServerMetadataResponse(name="mlrelease", version=version)
        self.in_flight = 0
        self.last_call = time.monotonic()

    def quiet(self, seconds: float) -> bool:
        """No call running and none started for ``seconds``: the drain may stop the server (grpcio cancels calls
        it holds unanswered when it stops, so the drain first lets them all come in and be answered)."""
        return self.in_flight == 0 and time.monotonic() - self.last_call >= seconds

    def guarded(self, call: str) -> Call:
        """The call ``call`` (a key of ROUTES), counted in flight; INVALID_ARGUMENT to a request that is not its
        message; UNAVAILABLE to a model call once the server drains (a client retries it at another replica)."""
        method: Call = getattr(self, call)

        async def guard(request: Any, context: aio.ServicerContext) -> Message:
            self.last_call = time.monotonic()
            self.in_flight += 1
            try:
                refusal = self._refusal(call, request)
                if refusal is not None:
                    await self._abort(context, call, refusal, time.perf_counter())
                return await method(request, context)
            finally:
                self.in_flight -= 1

        return guard

    def _refusal(self, call: str, request: Any) -> ClientError | None:
        """Why a call is refused before it starts, if it is: malformed bytes, or the server is draining."""
        if isinstance(request, Undecodable):
            return ClientError(
                400,
                "malformed_message",
                f"the request is not a valid {request.type_name} message ({request.error}); build it from "
                "grpc_predict_v2.proto",
            )
        if self.host.draining and call not in HEALTH_CALLS:
            return ClientError(
                503,
                "draining",
                "the server is shutting down; retry at another replica",
                headers=[(b"retry-after", b"1")],
            )
        return None

    def _begin(self, context: aio.ServicerContext, name: str, version: str = "") -> Serving:
        """Rate limit, API key, readiness, model name and version, as for HTTP; marks the call in flight."""
        peer = status.peer_address(context.peer())
        serving = self.host.begin(status.headers(context.invocation_metadata()), peer, name)
        try:
            _served(serving, version)
        except ClientError:
            serving.leave()
            raise
        return serving

    async def ServerLive(self, request: pb.ServerLiveRequest, context: aio.ServicerContext) -> pb.ServerLiveResponse:
        """Live while the process answers (no key needed, like /health)."""
        self._record("ServerLive", 200, time.perf_counter())
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: aio.ServicerContext) -> pb.ServerReadyResponse:
        """Ready exactly when /ready says 200 (loaded, not draining, circuit closed); no key needed, like /ready."""
        ready = self.host.readiness() is None
        self._record("ServerReady", 200 if ready else 503, time.perf_counter())
        return pb.ServerReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        """The server's name and version (no key needed)."""
        self._record("ServerMetadata", 200, time.perf_counter())
        return self._server_metadata

    async def ModelReady(self, request: pb.ModelReadyRequest, context: aio.ServicerContext) -> pb.ModelReadyResponse:
        """Whether this model serves now: NOT_FOUND for another model, UNAVAILABLE while none is loaded."""
        start = time.perf_counter()
        try:
            self._begin(context, request.name, request.version).leave()
        except ClientError as exc:
            await self._abort(context, "ModelReady", exc, start)
        self._record("ModelReady", 200, start)
        return pb.ModelReadyResponse(ready=self.host.readiness() is None)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        """GET /v2/models/NAME's document as the protocol's message (one source: responses.metadata_v2)."""
        start = time.perf_counter()
        try:
            serving = self._begin(context, request.name, request.version)
            serving.leave()
        except ClientError as exc:
            await self._abort(context, "ModelMetadata", exc, start)
        answer = json_format.ParseDict(
            orjson.loads(serving.metadata_v2), pb.ModelMetadataResponse(), ignore_unknown_fields=True
        )
        self._record("ModelMetadata", 200, start)
        return answer

    async def ModelInfer(self, request: pb.ModelInferRequest, context: aio.ServicerContext) -> pb.ModelInferResponse:
        """The rows through the shared micro-batcher; the outputs POST /v2/models/NAME/infer would answer."""
        start = time.perf_counter()
        try:
            answer = await self._infer(request, context)
        except ClientError as exc:
            await self._abort(context, "ModelInfer", exc, start)
        except asyncio.CancelledError:
            self._record("ModelInfer", CANCELLED, start)
            raise
        except Exception:
            log.exception("internal error on gRPC ModelInfer")
            self._record("ModelInfer", 500, start)
            await context.abort(grpc.StatusCode.INTERNAL, status.INTERNAL_MESSAGE)
            raise
        self._record("ModelInfer", 200, start)
        return answer

    async def _infer(self, request: pb.ModelInferRequest, context: aio.ServicerContext) -> pb.ModelInferResponse:
        serving = self._begin(context, request.model_name, request.model_version)
        try:
            serving.admit()
            decoded = tensors.decode(request, serving.names, self.max_batch)
            probs = await serving.submit(decoded.rows)
        finally:
            serving.leave()
        return tensors.encode(serving.model, probs, decoded)

    async def _abort(self, context: aio.ServicerContext, call: str, error: ClientError, start: float) -> NoReturn:
        """Count the call with its HTTP status, then end it with the mapped code and the HTTP message."""
        self._record(call, error.status, start)
        await context.abort(status.status_code(error), error.message, status.trailing_metadata(error))
        raise AssertionError("context.abort returned")  # it raises grpc.aio.AbortError, which ends the call

    def _record(self, call: str, http_status: int, start: float) -> None:
        self.host.metrics.record(ROUTES[call], http_status, time.perf_counter() - start)

"""Start the gRPC server in the running (uvicorn's) event loop, on the HTTP server's host, with its limits."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
from grpc import aio

from deploy.serving.grpc import GrpcStartError
from deploy.serving.grpc.service import ROUTES, Host, InferenceService, tolerant
from deploy.serving.grpc.v2 import grpc_predict_v2_pb2 as pb

log = logging.getLogger("deploy.serving.app")
QUIET_S = 0.05  # the drain stops the gRPC server once no call has run for this long (or its grace is over)


@dataclass(frozen=True)
class GrpcEndpoint:
    """The running gRPC server and its service."""

    server: aio.Server
    service: InferenceService

    async def stop(self, grace: float) -> None:
        """Drain: wait until the calls sent before the drain began are answered (model calls are refused from
        then on) and none came for QUIET_S, then stop, giving calls still running what is left of ``grace``."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not self.service.quiet(QUIET_S):
            await asyncio.sleep(QUIET_S / 5)
        await self.server.stop(max(0.0, deadline - time.monotonic()))


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel arguments: messages bounded like the HTTP body (larger ones get RESOURCE_EXHAUSTED from gRPC
    itself), and no SO_REUSEPORT, so a port another process holds is an error rather than a shared listener."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),  # an answer is bounded by the rows a request may send
        ("grpc.so_reuseport", 0),
    ]


def handlers(service: InferenceService) -> grpc.GenericRpcHandler:
    """The service's calls under their protocol names (other calls, such as the repository's, are UNIMPLEMENTED);
    requests are parsed tolerantly, so malformed bytes are the client's INVALID_ARGUMENT."""
    descriptor = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    calls = {}
    for name in ROUTES:
        method = descriptor.methods_by_name[name]
        calls[name] = grpc.unary_unary_rpc_method_handler(
            service.guarded(name),
            request_deserializer=tolerant(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(descriptor.full_name, calls)


def address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc(host: Host, bind_host: str, port: int) -> GrpcEndpoint:
    """Serve inference.GRPCInferenceService on ``bind_host:port`` in this event loop; GrpcStartError when the
    port cannot be bound."""
    server = aio.server(options=grpc_options(host.settings.max_body_bytes))
    service = InferenceService(host)
    server.add_generic_rpc_handlers((handlers(service),))
    where = address(bind_host, port)
    try:
        server.add_insecure_port(where)
    except RuntimeError as exc:  # grpcio: "Failed to bind to address ..."
        raise GrpcStartError(
            f"cannot serve gRPC on {where} ({exc}); free the port or set another MLRELEASE_GRPC_PORT"
        ) from None
    await server.start()
    log.info("Open Inference Protocol over gRPC on %s", where)
    return GrpcEndpoint(server, service)

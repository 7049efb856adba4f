"""The Open Inference Protocol over gRPC: a thin adapter over the HTTP server's model, batcher, checks and metrics.

``server.start_grpc`` serves ``inference.GRPCInferenceService`` (v2/, generated from KServe's proto) on
MLRELEASE_GRPC_PORT in the HTTP server's own event loop; ``service`` answers the calls, ``tensors`` turns protobuf
tensors into rows and probabilities back into tensors, ``status`` maps the HTTP errors to gRPC status codes. Nothing
here is imported (nor grpcio) unless the port is set, apart from this module.
"""


class GrpcStartError(RuntimeError):
    """The gRPC server cannot start (its port is taken, say): the server exits with this one line."""

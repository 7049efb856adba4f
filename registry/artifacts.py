"""One line for a registry whose artifact store fails, instead of MLflow's message about HTTP 500s or chunks.

A team server (`mlflow server --artifacts-destination s3://…`) stores and serves the artifacts: without storage
credentials, or with a bucket it cannot reach, it answers the client's artifact requests with 500, and MLflow's
client retries, then raises a message naming neither the store nor a fix. Downloads from an S3 store go straight to
the bucket through presigned URLs, so a host that cannot reach the bucket fails in its own way. Imported only
where artifacts move (it imports MLflow's exception type).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from mlrelease.core.errors import UserError
from registry.reach import redact

PROXY_PATH = "/mlflow-artifacts/"  # the server's artifact proxy (mlflow server --artifacts-destination)
SERVER_FAILED = ("500 error response", "500 Server Error", "INTERNAL_ERROR")
DIRECT_FAILED = "chunk(s) for"  # MLflow's presigned multipart download gave up on the bucket itself
SERVER_FIX = (
    "its artifact store (--artifacts-destination) is unreachable or refuses it: check the server's log, its storage "
    "credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or its role), the bucket, and MLFLOW_S3_ENDPOINT_URL "
    "for an S3-compatible store; then run the command again"
)
DIRECT_FIX = (
    "this host downloads straight from the bucket through presigned URLs and could not reach it: open the way to "
    "the store's endpoint, or set MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false to download through the server"
)


class ArtifactStoreError(MlflowException, UserError):
    """The registry's artifact store failed; an MLflow error too, so callers that cope with registry errors cope."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=TEMPORARILY_UNAVAILABLE)


def artifact_problem(exc: BaseException, uri: str, action: str) -> ArtifactStoreError | None:
    """The one-line error for a failed artifact ``action`` ("store", "fetch") at the registry ``uri``; None when
    ``exc`` is not about the artifact store (it stays what it is)."""
    text = " ".join(str(exc).split())
    where = f"the registry {redact(uri)} could not {action} the model's artifacts"
    if DIRECT_FAILED in text:
        return ArtifactStoreError(f"{where}: {DIRECT_FIX}")
    if PROXY_PATH in text and any(marker in text for marker in SERVER_FAILED):
        return ArtifactStoreError(f"{where}: the server answered 500; {SERVER_FIX}")
    return None


@contextlib.contextmanager
def artifact_errors(uri: str, action: str) -> Iterator[None]:
    """Inside, a failure of the registry's artifact store becomes :class:`ArtifactStoreError` (one line, what to do);
    every other error passes unchanged."""
    from requests import HTTPError  # MLflow's client raises it when it does not retry (no retries set)

    try:
        yield
    except (MlflowException, HTTPError) as exc:
        problem = artifact_problem(exc, uri, action)
        if problem is None:
            raise
        raise problem from exc

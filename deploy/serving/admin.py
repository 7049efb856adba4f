"""Hot swap for the model server: the admin reload endpoint's checks and body, loading a model off the event loop,
and freeing the model a swap retired.

The server (deploy/serving/app.py) holds the state a swap changes; nothing here imports it.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploy.serving.asgi import Headers
from deploy.serving.config import ModelSource, ServingSettings
from deploy.serving.model import LoadedModel, load_model
from deploy.serving.payload import ClientError
from deploy.serving.prediction import Serving
from deploy.serving.resolve import resolve
from deploy.serving.security import presented_secret, secret_matches


def enabled_token(token: bytes | None) -> bytes:
    """The admin token, or the 404 that says how to turn the admin endpoints on."""
    if token is None:
        raise ClientError(
            404,
            "admin_disabled",
            "admin endpoints are off; set MLRELEASE_ENABLE_ADMIN=true and MLRELEASE_ADMIN_TOKEN",
        )
    return token


def check_admin(headers: Headers, token: bytes) -> None:
    """A 401 unless the request presents the admin token as a bearer token."""
    if not secret_matches(presented_secret(headers, False), token):
        raise ClientError(
            401,
            "unauthorized",
            "admin endpoints need 'Authorization: Bearer ADMIN_TOKEN'",
            headers=[(b"www-authenticate", b"Bearer")],
        )


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


def load_source(source: ModelSource, settings: ServingSettings) -> LoadedModel:
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
            expected_sha256=bundle.expected(settings.model_variant),
            max_batch=settings.max_batch_size,
            source=source.describe(),
            runtime=settings.model_runtime,
            variant=settings.model_variant,
            program_cache=settings.program_cache,
            threads=settings.torch_threads,
        )


async def free_retired(previous: Serving) -> None:
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

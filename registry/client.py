"""One place that points MLflow at the configured registry (sqlite in the workspace, or a team server)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mlrelease.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

ALIASES = ("candidate", "staging", "canary", "production")
_MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# what the registry answers for a model, version or alias it does not have (sqlite: an unset alias is
# INVALID_PARAMETER_VALUE, a missing model RESOURCE_DOES_NOT_EXIST; a REST server passes the same codes on)
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


# An incident's registry calls give up in seconds: MLflow's defaults (7 retries, backoff factor 2, 120 s timeout)
# spend about four minutes on a server that refuses connections, and longer on one that never answers.
BRIEF_REQUESTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


OUTER_ENV_VAR = "MLRELEASE_OUTER_MLFLOW_HTTP"  # the values brief_requests replaced, for long-lived children


@contextlib.contextmanager
def brief_requests() -> Iterator[None]:
    """MLflow REST calls inside give up within seconds (read by MLflow per request); the environment comes back
    after. For the rollback, which moves traffic whether or not the registry answers."""
    saved = {key: os.environ.get(key) for key in (*BRIEF_REQUESTS, OUTER_ENV_VAR)}
    os.environ.update(BRIEF_REQUESTS)
    # a server or router started meanwhile gets the environment from before (deploy/targets/process.py)
    if saved[OUTER_ENV_VAR] is None:  # nested: the outermost values stay the ones children get
        os.environ[OUTER_ENV_VAR] = json.dumps({key: saved[key] for key in BRIEF_REQUESTS})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_registry_error(exc: BaseException) -> bool:
    """An error raised by MLflow (the registry refused, could not be reached, or does not have the thing), told by
    its module so that callers need not import mlflow (about a second) to catch it."""
    return type(exc).__module__.startswith("mlflow")


def is_not_found(exc: Exception) -> bool:
    """True when an MlflowException says the thing asked for does not exist; False for an unreachable server, a
    refused login or a locked database, which must reach the user as what they are."""
    return getattr(exc, "error_code", None) in NOT_FOUND_CODES


def configure_mlflow(settings: Settings | None = None) -> str:
    """Set the tracking/registry URI (and the local artifact root for sqlite); return the URI."""
    import mlflow

    settings = settings or get_settings()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        (settings.home / "mlruns").mkdir(parents=True, exist_ok=True)
    saved = {key: os.environ.get(key) for key in _MLFLOW_URI_VARS}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow also exports the URI into os.environ; undo that, or later Settings() and child processes in this
    # process would silently follow the last registry configured here instead of their own workspace.
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return uri


def ensure_experiment(name: str, settings: Settings | None = None) -> str:
    """Create the experiment if missing (with the workspace artifact root under sqlite); return its id."""
    import mlflow

    settings = settings or get_settings()
    configure_mlflow(settings)
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    location = None
    if settings.tracking_uri.startswith("sqlite:///"):
        location = settings.artifact_root.as_uri()
    return str(mlflow.create_experiment(name, artifact_location=location))


def get_client(settings: Settings | None = None) -> MlflowClient:
    """An MlflowClient on the configured registry."""
    from mlflow import MlflowClient

    uri = configure_mlflow(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)

"""One place that points MLflow at the configured registry (sqlite in the workspace, or a team server), and
bounds how long a command waits for a registry server that does not answer."""

from __future__ import annotations

import contextlib
import json
import math
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

# How long a command waits for a registry server before it gives up with one line (0: no check, MLflow's own
# retries only). MLflow reads its request settings (below) as whole seconds.
TIMEOUT_VAR = "MLRELEASE_REGISTRY_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 10.0
_REQUEST_TIMEOUT_VAR = "MLFLOW_HTTP_REQUEST_TIMEOUT"

# An incident's registry calls give up in seconds: MLflow's defaults (7 retries, backoff factor 2, 120 s timeout)
# spend about four minutes on a server that refuses connections, and longer on one that never answers.
BRIEF_REQUESTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    _REQUEST_TIMEOUT_VAR: "5",
}


OUTER_ENV_VAR = "MLRELEASE_OUTER_MLFLOW_HTTP"  # the values brief/bounded_requests replaced, for long-lived children

_ANSWERED: set[str] = set()  # registry servers that answered this process's check (checked once each)


def registry_timeout_s() -> float:
    """Seconds a command waits for the registry server (MLRELEASE_REGISTRY_TIMEOUT_S, default 10; 0: no check)."""
    raw = os.environ.get(TIMEOUT_VAR, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        from registry.reach import RegistrySettingError

        raise RegistrySettingError(f"{TIMEOUT_VAR}={raw!r}: use a number of seconds >= 0, e.g. 10 (0: no check)")
    return value


def bounded_values(timeout_s: float) -> dict[str, str]:
    """MLflow request settings under which one registry call gives up after about three times ``timeout_s``."""
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        _REQUEST_TIMEOUT_VAR: str(max(1, math.ceil(timeout_s))),
    }


@contextlib.contextmanager
def _mlflow_requests(values: dict[str, str], keep_set: bool) -> Iterator[None]:
    """MLflow's request settings ``values`` inside (``keep_set``: only those the environment does not set); the
    environment comes back after, and a server or router started meanwhile gets the one from before
    (deploy/targets/local/processes.py reads OUTER_ENV_VAR)."""
    saved = {key: os.environ.get(key) for key in (*values, OUTER_ENV_VAR)}
    os.environ.update({key: value for key, value in values.items() if not (keep_set and saved[key] is not None)})
    if saved[OUTER_ENV_VAR] is None:  # nested: the outermost values stay the ones children get
        os.environ[OUTER_ENV_VAR] = json.dumps({key: saved[key] for key in values})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def brief_requests() -> Iterator[None]:
    """MLflow REST calls inside give up within seconds (read by MLflow per request); the environment comes back
    after. For the rollback, which moves traffic whether or not the registry answers."""
    with _mlflow_requests(BRIEF_REQUESTS, keep_set=False):
        yield


@contextlib.contextmanager
def bounded_requests() -> Iterator[None]:
    """A command's MLflow REST calls are bounded by the registry timeout: the settings the user has not set are
    filled in (MLflow's defaults wait minutes per call); nothing changes with a timeout of 0."""
    timeout_s = registry_timeout_s()
    if timeout_s <= 0:
        yield
        return
    with _mlflow_requests(bounded_values(timeout_s), keep_set=True):
        yield


def is_registry_error(exc: BaseException) -> bool:
    """An error raised by MLflow (the registry refused, could not be reached, or does not have the thing), or one
    derived from MLflow's (registry.reach.RegistryUnreachable), told by its classes' modules so that callers need
    not import mlflow (about a second) to catch it."""
    return any(cls.__module__.startswith("mlflow") for cls in type(exc).__mro__)


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
    check_answers(uri)
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


def check_answers(uri: str) -> None:
    """A registry server must answer within the registry timeout (or MLflow's request timeout, when shorter: a
    rollback's brief requests), else registry.reach.RegistryUnreachable; once per server and process."""
    if uri in _ANSWERED:
        return
    from registry.reach import check_reachable

    check_reachable(uri, min(registry_timeout_s(), _request_timeout_s()))
    _ANSWERED.add(uri)


def _request_timeout_s() -> float:
    """MLflow's request timeout as set in the environment (infinite when unset or unreadable)."""
    try:
        return float(os.environ[_REQUEST_TIMEOUT_VAR])
    except (KeyError, ValueError):
        return math.inf


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

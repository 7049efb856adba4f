"""One place that points MLflow at the configured registry (sqlite in the workspace, or a team server)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mlrelease.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

ALIASES = ("candidate", "staging", "canary", "production")
_MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


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

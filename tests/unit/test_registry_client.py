"""The registry client points MLflow at the configured workspace without side effects."""

from __future__ import annotations

from pathlib import Path


def test_configuring_mlflow_does_not_leak_into_the_environment(tmp_path: Path, monkeypatch) -> None:
    """MLflow exports the URI to os.environ; a second workspace in the same process must not inherit it."""
    import os

    from mlrelease.settings import Settings
    from registry.client import configure_mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    configure_mlflow(Settings(home=tmp_path / "a"))
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert str(tmp_path / "b") in Settings(home=tmp_path / "b").tracking_uri

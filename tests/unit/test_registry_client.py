"""The registry client points MLflow at the configured workspace without side effects."""

from __future__ import annotations

from pathlib import Path


def test_configuring_mlflow_does_not_leak_into_the_environment(tmp_path: Path, monkeypatch) -> None:
    """MLflow exports the URI to os.environ; a second workspace in the same process must not inherit it."""
    import os

    from mlrelease.core.settings import Settings
    from registry.client import configure_mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    configure_mlflow(Settings(home=tmp_path / "a"))
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert str(tmp_path / "b") in Settings(home=tmp_path / "b").tracking_uri


def test_an_unset_alias_is_none_but_an_unreachable_registry_is_an_error(tmp_path: Path, monkeypatch) -> None:
    """`promote staging` with the registry down said "no version has alias `candidate` ... register one first":
    every registry error read as an unset alias. Only "not found" is None now; the rest reaches the user."""
    import pytest
    from mlflow.exceptions import MlflowException

    from mlrelease.core.net import free_port
    from mlrelease.core.settings import Settings
    from registry.versions import Registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = Registry("no-such-model", Settings(home=tmp_path / "local"))
    assert local.alias("candidate") is None  # no such model
    local.client.create_registered_model("no-such-model")
    assert local.alias("candidate") is None  # the model, but no such alias

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = Registry("m", Settings(home=tmp_path / "down", mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(MlflowException):
        down.alias("candidate")


def test_brief_registry_requests_stay_in_the_rollback(monkeypatch) -> None:
    """The rollback's short MLflow timeouts went on to every server and router it started, which outlive it."""
    import os

    from deploy.targets.local.processes import detached_env
    from registry.client import BRIEF_REQUESTS, brief_requests

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with brief_requests():
        assert all(os.environ[key] == value for key, value in BRIEF_REQUESTS.items())
        child = detached_env()
        assert child["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300" and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in child
        assert not any(key.startswith("MLRELEASE_OUTER") for key in child)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300" and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert not any(key.startswith("MLRELEASE_OUTER") for key in os.environ)


def test_nested_brief_requests_keep_the_outermost_values_for_children(monkeypatch) -> None:
    import os

    from deploy.targets.local.processes import detached_env
    from registry.client import brief_requests

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    with brief_requests(), brief_requests():
        assert detached_env()["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"

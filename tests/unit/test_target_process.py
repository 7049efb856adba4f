"""Detached children of the local target outlive a CI job: no runner tracking marker in their environment, and
a rollback's brief MLflow request settings do not reach them (the children themselves start in
tests/integration/test_process_control.py)."""

from __future__ import annotations

import json

import pytest

from deploy.targets.local.processes import OUTER_ENV_VAR, REPO_ROOT, detached_env


def test_a_detached_childs_environment_drops_the_runner_tracking_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_TRACKING_ID", "github_0123")
    monkeypatch.setenv("MLRELEASE_KEPT", "yes")
    env = detached_env({"RUNNER_TRACKING_ID": "again", "EXTRA": "given"}, dropped=("MLRELEASE_GONE",))
    assert "RUNNER_TRACKING_ID" not in env and env["MLRELEASE_KEPT"] == "yes" and env["EXTRA"] == "given"
    monkeypatch.setenv("MLRELEASE_GONE", "x")
    assert "MLRELEASE_GONE" not in detached_env(dropped=("MLRELEASE_GONE",))


def test_a_detached_child_gets_the_mlflow_settings_from_before_a_brief_request_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    outer = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "120", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": None}
    monkeypatch.setenv(OUTER_ENV_VAR, json.dumps(outer))
    env = detached_env()
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120" and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in env
    assert OUTER_ENV_VAR not in env


def test_children_start_from_the_repository() -> None:
    assert (REPO_ROOT / "deploy" / "targets" / "local" / "processes.py").is_file()

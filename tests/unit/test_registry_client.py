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


def test_the_registry_timeout_is_ten_seconds_unless_set(monkeypatch) -> None:
    import pytest

    from registry.client import DEFAULT_TIMEOUT_S, TIMEOUT_VAR, registry_timeout_s
    from registry.reach import RegistrySettingError

    monkeypatch.delenv(TIMEOUT_VAR, raising=False)
    assert registry_timeout_s() == DEFAULT_TIMEOUT_S == 10.0
    monkeypatch.setenv(TIMEOUT_VAR, "2.5")
    assert registry_timeout_s() == 2.5
    monkeypatch.setenv(TIMEOUT_VAR, "0")
    assert registry_timeout_s() == 0.0  # the check is off
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv(TIMEOUT_VAR, bad)
        with pytest.raises(RegistrySettingError, match=TIMEOUT_VAR):
            registry_timeout_s()


def test_a_registry_that_refuses_or_never_answers_is_named_within_the_timeout() -> None:
    """MLflow's own client retried a registry that did not answer for minutes, in urllib3 warnings; the check
    gives up within the timeout, with one line naming the URI (never its password) and what to do."""
    import socket
    import time

    import pytest

    from mlrelease.core.net import free_port
    from registry.client import is_registry_error
    from registry.reach import RegistryUnreachable, check_reachable

    with pytest.raises(RegistryUnreachable) as refused:
        check_reachable(f"http://ana:s3cret@127.0.0.1:{free_port()}", timeout_s=5)
    assert "refused the connection" in str(refused.value) and "s3cret" not in str(refused.value)
    assert "MLFLOW_TRACKING_URI" in str(refused.value) and is_registry_error(refused.value)
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        with pytest.raises(RegistryUnreachable, match="did not answer within 0.6 s"):
            check_reachable(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.6)
        assert time.monotonic() - started < 2
    check_reachable("sqlite:////nowhere/mlflow.db", timeout_s=0.1)  # a file: nothing to check
    check_reachable("http://127.0.0.1:1", timeout_s=0)  # 0: the check is off


def test_a_registry_that_answers_passes_whatever_its_status(monkeypatch) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from registry.reach import check_reachable

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  # the stdlib's name
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_reachable(f"http://127.0.0.1:{server.server_port}/prefix", timeout_s=5)
    finally:
        server.shutdown()
        server.server_close()


def test_a_command_bounds_mlflow_requests_but_keeps_the_users_and_the_childrens(monkeypatch) -> None:
    """The CLI fills in bounded MLflow request settings for the command; what the user set stays, and servers it
    starts (and a rollback's brief requests inside) leave the children the environment from before."""
    import os

    from deploy.targets.local.processes import detached_env
    from registry.client import OUTER_ENV_VAR, TIMEOUT_VAR, bounded_requests, brief_requests

    monkeypatch.setenv(TIMEOUT_VAR, "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    monkeypatch.delenv(OUTER_ENV_VAR, raising=False)
    with bounded_requests():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
        with brief_requests():
            assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
            assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in detached_env()
        child = detached_env()
        assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in child and child["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ and OUTER_ENV_VAR not in os.environ
    monkeypatch.setenv(TIMEOUT_VAR, "0")  # no check, no bounds: MLflow's own
    with bounded_requests():
        assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_configuring_an_unreachable_registry_fails_fast_and_once_answered_is_not_asked_again(
    tmp_path, monkeypatch
) -> None:
    import pytest

    from mlrelease.core.net import free_port
    from mlrelease.core.settings import Settings
    from registry import client
    from registry.reach import RegistryUnreachable

    monkeypatch.setenv(client.TIMEOUT_VAR, "1")
    down = Settings(home=tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryUnreachable):
        client.get_client(down)
    monkeypatch.setattr(client, "_ANSWERED", {down.tracking_uri})
    client.configure_mlflow(down)  # answered before in this process: no second check

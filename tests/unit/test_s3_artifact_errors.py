"""A registry whose artifact store fails (an S3 bucket without credentials or out of reach) is said in one line at
register and at fetch, naming the store and what to check; other registry errors stay what they are."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from requests import HTTPError

from mlrelease.core.settings import Settings
from registry.artifacts import ArtifactStoreError, artifact_errors, artifact_problem

URI = "http://alice:secret@mlflow.team.example:5000"
UPLOAD = "http://mlflow.team.example:5000/api/2.0/mlflow-artifacts/artifacts/1/models/m-1/artifacts/model.pt"
SERVER_500 = MlflowException(
    f"API request to {UPLOAD} failed with exception HTTPConnectionPool(host='mlflow.team.example', port=5000): "
    f"Max retries exceeded with url: {UPLOAD} (Caused by ResponseError('too many 500 error responses'))"
)
CHUNKS = MlflowException("Failed to download 1 chunk(s) for artifacts/model.pt after all retries exhausted.")


def test_a_server_whose_store_fails_is_one_line_naming_the_store_and_its_settings() -> None:
    problem = artifact_problem(SERVER_500, URI, "store")
    assert isinstance(problem, ArtifactStoreError)
    said = str(problem)
    assert said.startswith("the registry http://mlflow.team.example:5000 could not store the model's artifacts")
    assert "answered 500" in said and "--artifacts-destination" in said and "MLFLOW_S3_ENDPOINT_URL" in said
    assert "secret" not in said and "\n" not in said


def test_a_host_that_cannot_reach_the_bucket_is_told_how_to_download_through_the_server() -> None:
    said = str(artifact_problem(CHUNKS, URI, "fetch"))
    assert "could not fetch" in said and "presigned" in said and "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false" in said


def test_an_http_error_without_retries_is_recognised_too() -> None:
    error = HTTPError(f"500 Server Error: INTERNAL SERVER ERROR for url: {UPLOAD}")
    assert isinstance(artifact_problem(error, URI, "fetch"), ArtifactStoreError)


def test_other_registry_errors_pass_unchanged() -> None:
    missing = MlflowException("Registered Model with name=m not found", error_code="RESOURCE_DOES_NOT_EXIST")
    assert artifact_problem(missing, URI, "fetch") is None
    with pytest.raises(MlflowException) as raised, artifact_errors(URI, "fetch"):
        raise missing
    assert raised.value is missing


def test_the_cli_says_it_in_one_line_with_exit_2() -> None:
    from mlrelease.cli import explain
    from registry.client import is_registry_error

    problem = artifact_problem(SERVER_500, URI, "fetch")
    assert problem is not None and is_registry_error(problem)  # callers that cope with registry errors cope
    said = explain(problem)
    assert said is not None and said[1] == 2 and said[0] == str(problem)


def test_register_bundle_says_the_store_failed(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import registry.register as register

    def upload_fails(*args: Any, **kwargs: Any) -> str:
        raise SERVER_500

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(register, "_log_pyfunc", upload_fails)
    with pytest.raises(ArtifactStoreError, match="could not store the model's artifacts"):
        register.register_bundle(bundle, "m", metrics={}, params={}, tags={}, settings=Settings(home=tmp_path))


def test_download_bundle_says_the_store_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.artifacts

    import registry.register as register

    def download_fails(*args: Any, **kwargs: Any) -> str:
        raise CHUNKS

    version = SimpleNamespace(name="m", version="1", tags={register.SHA_TAG: "0" * 64})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(register, "resolve_version", lambda *args, **kwargs: version)
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download_fails)
    with pytest.raises(ArtifactStoreError, match="could not fetch the model's artifacts"):
        register.download_bundle("1", "m", tmp_path / "dest", Settings(home=tmp_path))

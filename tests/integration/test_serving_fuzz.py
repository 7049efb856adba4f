"""Schemathesis fuzzes the running server from its own OpenAPI document: zero server errors, schema-true answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving_helpers import ADMIN_TOKEN, API_KEY, run_server, shared_bundle

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("serving")]
CHECKS = "all"
EXCLUDED = "positive_data_acceptance"  # schema-valid but meaningless bodies (a model_dir that does not exist) get 422


def test_schemathesis_finds_no_server_error(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    bundle = shared_bundle(tmp_path_factory, seed=0)
    settings = {"api_key": API_KEY, "enable_admin": "true", "admin_token": ADMIN_TOKEN, "max_batch_size": "16"}
    with run_server(bundle, tmp_path, **settings) as srv:
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{srv.url}/openapi.json",
            "--checks",
            CHECKS,
            "--exclude-checks",
            EXCLUDED,
            "--mode",
            "all",
            "--max-examples",
            "30",
            "--seed",
            "7",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "-H",
            f"Authorization: Bearer {ADMIN_TOKEN}",
            "-H",
            f"X-API-Key: {API_KEY}",
        ]
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-4000:]
        assert "passed" in proc.stdout
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'status="500"' not in metrics
        assert 'status="422"' in metrics and 'status="200"' in metrics
        assert httpx.get(f"{srv.url}/ready").status_code == 200
        assert "Traceback" not in srv.log()

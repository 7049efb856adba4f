"""The load-test gate: the DVC stage's code against a real server, and the CLI naming a breached SLO."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.serving_helpers import REPO, run_server, server_env, shared_bundle, write_test_csv

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("serving")]


def workspace(root: Path, bundle: Path, **loadtest: object) -> Path:
    """models/, data/prepared/test.csv and params.yaml with a short load test."""
    shutil.copytree(bundle, root / "models")
    write_test_csv(root / "data" / "prepared" / "test.csv", target="diagnosis")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["target"] = "diagnosis"
    params["loadtest"] = {"users": 4, "spawn_rate": 4, "duration_s": 5, "user_rps": 20, **loadtest}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_stage_serves_the_bundle_runs_locust_and_stops_the_server(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    root = workspace(
        tmp_path,
        shared_bundle(tmp_path_factory, seed=0),
        slo={"p95_ms": 2000, "p99_ms": 3000, "max_error_rate": 0.0, "min_rps": 5},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.loadtest.stage"],
        cwd=root,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = json.loads((root / "reports" / "loadtest.json").read_text())
    assert report["stats"]["requests"] > 0, report["failures"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["passed"] is True and report["breaches"] == []
    assert report["stats"]["requests"] > 0 and report["stats"]["failures"] == 0
    assert report["model_name"] == "breast-cancer-classifier"
    assert "<html" in (root / "reports" / "loadtest.html").read_text().lower()
    server_log = (root / ".mlrelease" / "loadtest-server.log").read_text()
    assert "Finished server process" in server_log  # the stage stopped the server it started


def test_cli_names_the_breached_slo_and_exits_non_zero(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    root = workspace(
        tmp_path,
        shared_bundle(tmp_path_factory, seed=0),
        slo={"p95_ms": 2000, "p99_ms": 3000, "max_error_rate": 0.0, "min_rps": 1_000_000},
    )
    with run_server(root / "models", tmp_path) as srv:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("mlrelease")), "loadtest", "--url", srv.url],
            cwd=root,
            env=server_env(),
            capture_output=True,
            text=True,
            timeout=240,
        )
    report = json.loads((root / "reports" / "loadtest.json").read_text())
    assert report["stats"]["requests"] > 0, report["failures"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "SLO breached" in proc.stdout and "throughput" in proc.stdout and "< 1e+06 req/s" in proc.stdout
    report = json.loads((root / "reports" / "loadtest.json").read_text())
    assert report["passed"] is False and report["breaches"][0].startswith("throughput")


def test_stage_fails_fast_when_the_model_cannot_load(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    root = workspace(tmp_path, shared_bundle(tmp_path_factory, seed=0))
    (root / "models" / "model.pt").write_bytes(b"tampered")
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.loadtest.stage"],
        cwd=root,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 2
    assert "failed to load its model" in proc.stderr and "sha256" in proc.stderr
    assert not (root / "reports" / "loadtest.json").exists()

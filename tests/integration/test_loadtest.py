"""The load-test gate: the DVC stage's code against a real server, and the CLI naming a breached SLO."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlrelease.core.proc import pid_alive
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
    # an operator's settings for production servers must not reach the gate's own server: a model URI as well as
    # the stage's --model-dir would stop it starting, a per-client rate limit would answer the test with 429s
    operator = server_env(model_uri="models:/other-model@production", rate_limit_per_second="0.5")
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.loadtest.stage"],
        cwd=root,
        env=operator,
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
    assert "Finished server process" in (root / ".mlrelease" / "loadtest-server.log").read_text()


def processes_with(fragment: str) -> list[int]:
    """Pids whose command line contains ``fragment``."""
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"]) if fragment in " ".join(p.info["cmdline"] or [])]


def test_sigterm_to_the_stage_stops_the_server_and_locust(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A cancelled CI job or `kill` sends SIGTERM mid-test: the stage must leave no server on its port, no Locust."""
    root = workspace(tmp_path, shared_bundle(tmp_path_factory, seed=0), duration_s=120)
    server_log = root / ".mlrelease" / "loadtest-server.log"
    stage = subprocess.Popen(
        [sys.executable, "-m", "deploy.loadtest.stage"],
        cwd=root,
        env=server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        for _ in range(1200):
            text = server_log.read_text() if server_log.exists() else ""
            server = re.search(r"Started server process \[(\d+)\]", text)
            port = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", text)
            locust = processes_with(f"--host http://127.0.0.1:{port.group(1)}") if port else []
            if server and locust:
                pids = [int(server.group(1)), *locust]
                break
            time.sleep(0.05)
        assert pids, "the stage's server or Locust did not start"
        stage.send_signal(signal.SIGTERM)
        _, stderr = stage.communicate(timeout=60)
        assert stage.returncode == 128 + signal.SIGTERM, stderr[-2000:]
        assert "Finished server process" in server_log.read_text()
        assert not any(map(pid_alive, pids)), "no server, no Locust left"
    finally:
        stage.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_params_mistake_is_could_not_run_not_a_breach(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Exit 1 is the gate's verdict (an SLO breached); a typo in params.yaml is exit 2, named in one line."""
    root = workspace(tmp_path, shared_bundle(tmp_path_factory, seed=0), userz=4)
    stage = subprocess.run(
        [sys.executable, "-m", "deploy.loadtest.stage"], cwd=root, env=server_env(), capture_output=True, text=True
    )
    assert stage.returncode == 2 and "loadtest.userz" in stage.stderr, stage.stderr[-2000:]
    cli = subprocess.run(
        [str(Path(sys.executable).with_name("mlrelease")), "loadtest", "--url", "http://127.0.0.1:9"],
        cwd=root,
        env=server_env(),
        capture_output=True,
        text=True,
    )
    # one line on stderr, like every command's mistake (docs/cli.md)
    assert cli.returncode == 2 and "loadtest.userz" in cli.stderr and "Traceback" not in cli.stderr, cli.stderr
    assert not (root / "reports" / "loadtest.json").exists()

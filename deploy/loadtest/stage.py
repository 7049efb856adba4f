"""The `loadtest` DVC stage: serve models/ on loopback, wait for /ready, run the gate, always stop the server.

``python -m deploy.loadtest.stage [--params params.yaml] [--model-dir models] [--test-csv ...]``;
exits 1 naming
every breached SLO, 2 when the test could not run.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from deploy.loadtest.runner import LoadtestError, LoadtestParams, run_loadtest, wait_ready
from mlrelease.net import free_port, stop_process
from mlrelease.params import load_params, run_stage, section
from mlrelease.settings import get_settings

log = logging.getLogger("deploy.loadtest.stage")


def start_server(model_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m deploy.serving`` on 127.0.0.1:port, logging to log_path; admin endpoints off."""
    env = {**os.environ, "MLRELEASE_ENABLE_ADMIN": "false"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as handle:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy.serving",
                "--model-dir",
                str(model_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.loadtest.stage", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--test-csv", type=Path, default=Path("data/prepared/test.csv"))
    parser.add_argument("--out", type=Path, default=Path("reports/loadtest.json"))
    parser.add_argument("--html", type=Path, default=Path("reports/loadtest.html"))
    parser.add_argument("--server-log", type=Path, default=Path(".mlrelease/loadtest-server.log"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_params(args.params)
    loadtest = section(params, "loadtest", LoadtestParams)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(args.model_dir, port, args.server_log)
    try:
        wait_ready(url, loadtest.ready_timeout_s, alive=lambda: process.poll() is None)
        headers = get_settings().prediction_headers()  # the server inherits this environment, API key included
        report = run_loadtest(url, loadtest, args.test_csv, params.data.target, args.out, args.html, headers)
    except LoadtestError as exc:
        log.error("loadtest could not run: %s (server log: %s)", exc, args.server_log)
        return 2
    finally:
        stop_process(process)
    stats = report["stats"]
    log.info(
        "loadtest: %.0f req/s, p95 %.1f ms, p99 %.1f ms, errors %.4f",
        stats["rps"],
        stats["p95_ms"],
        stats["p99_ms"],
        stats["error_rate"],
    )
    if report["breaches"]:
        log.error("loadtest SLO breached: %s", "; ".join(report["breaches"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_stage("loadtest", main))

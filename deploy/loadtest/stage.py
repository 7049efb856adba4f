"""The `loadtest` DVC stage: serve models/ on loopback, wait for /ready, run the gate, always stop the server.

``python -m deploy.loadtest.stage [--params params.yaml] [--model-dir models] [--test-csv ...]``;
exits 1 naming every breached SLO, 2 when the test could not run (a params.yaml mistake included).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.loadtest.runner import LoadtestError, LoadtestParams, run_loadtest, wait_ready
from mlrelease.core.net import free_port, stop_process
from mlrelease.core.params import Params, load_params, run_stage, section
from mlrelease.core.settings import get_settings

log = logging.getLogger("deploy.loadtest.stage")


# Settings of the environment a gate's server must not take: it serves --model-dir (a model URI as well would be
# refused), and every Locust user comes from 127.0.0.1, so a per-client rate limit meant for production would turn
# the test's own load into 429s, reported as errors.
SERVER_OVERRIDES = {"MLRELEASE_ENABLE_ADMIN": "false", "MLRELEASE_RATE_LIMIT_PER_SECOND": "0"}
SERVER_DROPPED = ("MLRELEASE_MODEL_URI", "MLRELEASE_MODEL_DIR", "MLRELEASE_MODEL_VERSION")


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The stage's environment (API key and serving settings included) less what would skew or stop the test."""
    env = {key: value for key, value in environ.items() if key not in SERVER_DROPPED}
    return {**env, **SERVER_OVERRIDES}


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM (a cancelled CI job, ``kill``) into SystemExit while the server runs, so the stage's
    ``finally`` stops the server it started instead of leaving it on its port; the old handler comes back after."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_server(model_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m deploy.serving`` on 127.0.0.1:port, logging to log_path; admin endpoints and rate limit off."""
    env = server_environment(os.environ)
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


def serve_and_test(args: argparse.Namespace, params: Params, loadtest: LoadtestParams) -> dict[str, Any] | None:
    """Start the server, wait for /ready, run the load test, always stop the server; None if it could not run."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = None
    try:
        process = start_server(args.model_dir, port, args.server_log)
        wait_ready(url, loadtest.ready_timeout_s, alive=lambda: process.poll() is None)
        headers = get_settings().prediction_headers()  # the server inherits this environment, API key included
        return run_loadtest(url, loadtest, args.test_csv, params.data.target, args.out, args.html, headers)
    except LoadtestError as exc:
        log.error("loadtest could not run: %s (server log: %s)", exc, args.server_log)
        return None
    finally:
        if process is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the server's stop short
            stop_process(process)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_params(args.params)
    loadtest = section(params, "loadtest", LoadtestParams)
    with sigterm_as_exit():
        report = serve_and_test(args, params, loadtest)
    if report is None:
        return 2
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
    sys.exit(run_stage("loadtest", main, config_exit=2))

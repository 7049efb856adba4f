"""The serving benchmark's fixed settings, and the environment and CPU pinning of every process it starts."""

from __future__ import annotations

import os
import shutil

from benchmarks import REPO

CONNECTIONS = 64
GENERATOR_BOUND_BUSY = 0.9  # a server using less of its core than this at its "peak" was waiting for wrk ...
STEAL_WORTH_NAMING = 0.02  # ... or, on a VM, for the host: the report names steal time above this share
SERVER_CPU = 0  # servers run on this CPU, wrk on the next (pinned)
STEAL_KEYS = {"core_stolen_share": "servers' core", "wrk_core_stolen_share": "wrk's core"}  # steal_during's keys
SATURATED_SHORTFALL = 0.03  # a paced point that achieves less than 97% of its target rate ran saturated
STEADINESS_SECONDS = 3.0  # the core probe's run, before and after the latency points
UNSTEADY_SHARE = 0.01  # an ideal server at 80% load would be past the p99 target after more windows than this
TARGETS = {
    "min_speedup_vs_mlflow": 10.0,
    "min_fraction_of_ceiling": 0.5,
    "max_p99_ms_at_80": 10.0,
    "max_rss_mb": 400.0,
}


def pinned(cpu: int, command: list[str]) -> list[str]:
    """Prefix with taskset when there are at least two CPUs (server and load generator apart)."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *command]
    return command


def base_env() -> dict[str, str]:
    """The environment of every process the benchmark starts: no MLRELEASE_ settings, the repository importable
    (``python -m benchmarks.bare``), MLflow telemetry off, one OpenMP thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLRELEASE_")}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    return env

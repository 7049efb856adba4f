"""What the benchmark reads: CPU, memory and steal time of the servers, their loop lag, their core's steadiness."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.serving.config import SERVER_CPU, STEAL_KEYS, TARGETS, base_env, pinned

log = logging.getLogger(__name__)


def _tree(pid: int) -> list[Any]:
    import psutil

    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(Exception):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def core_times(cpu: int) -> tuple[int, int] | None:
    """(steal, total) clock ticks of one CPU from /proc/stat: the time a hypervisor gave to another guest counts
    as steal; None where the file or the CPU is missing."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"cpu{cpu} "):
            fields = [int(v) for v in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
            return (fields[7] if len(fields) > 7 else 0), sum(fields)
    return None


def stolen_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of a CPU's time the host took between two core_times readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def both_cores() -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """core_times of the servers' core and of wrk's, read together."""
    return core_times(SERVER_CPU), core_times(SERVER_CPU + 1)


def steal_during(before: tuple[tuple[int, int] | None, tuple[int, int] | None]) -> dict[str, float | None]:
    """The share of the servers' core and of wrk's that the host took since ``before`` (both_cores())."""
    after = both_cores()
    return {key: stolen_share(then, now) for key, then, now in zip(STEAL_KEYS, before, after, strict=True)}


def rss_mb(pid: int) -> float:
    """Resident memory of the process tree, counting once what its processes share with the largest one.

    Summing each process's RSS counts the interpreter and libraries that a parent shares with its worker (as
    mlflow's CLI does with its uvicorn worker) twice; so this is the largest RSS in the tree plus the memory unique
    to each other process (USS). An approximation: pages only the smaller processes share are not counted. For a
    single process it is its RSS; a process whose USS cannot be read counts its whole RSS.
    """
    sizes: list[tuple[int, int]] = []
    for proc in _tree(pid):
        with contextlib.suppress(Exception):
            rss = proc.memory_info().rss
            try:
                uss = proc.memory_full_info().uss
            except Exception:  # psutil.AccessDenied and the like: count it all, rather than nothing
                uss = rss
            sizes.append((rss, uss))
    if not sizes:
        return 0.0
    (largest, _), *others = sorted(sizes, reverse=True)
    return (largest + sum(uss for _, uss in others)) / 2**20


def loop_lag(url: str) -> dict[float, float] | None:
    """The server's event-loop lag histogram (cumulative counts by upper bound; +Inf as inf), or None without one."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        answer = httpx.get(url + "/metrics", timeout=5)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200 or not answer.headers.get("content-type", "").startswith("text/plain"):
        return None  # the bare servers answer every path with their fixed prediction
    try:
        buckets = {
            float(sample.labels["le"]): sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples
            if sample.name == "mlrelease_event_loop_lag_seconds_bucket"
        }
    except ValueError:
        return None
    return buckets or None


def lag_during(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Samples taken between two scrapes, and the share of them that ran 10 ms or more late."""
    samples = after[math.inf] - before[math.inf]
    late = samples - (after[0.01] - before[0.01])
    return {"samples": samples, "share_over_10ms": late / samples if samples else 0.0}


def core_steadiness(cpu: int, seconds: float) -> dict[str, Any]:
    """The steadiness probe (benchmarks/steadiness.py) pinned to ``cpu``, in its own process.

    A probe that fails is recorded as ``{"error": ...}``: it must not cost the run's measurements.
    """
    command = [sys.executable, "-m", "benchmarks.steadiness", "--seconds", f"{seconds:g}"]
    command += ["--behind-ms", f"{TARGETS['max_p99_ms_at_80']:g}"]
    try:
        proc = subprocess.run(
            pinned(cpu, command), capture_output=True, text=True, timeout=seconds + 60, check=True, env=base_env()
        )
        summary: dict[str, Any] = json.loads(proc.stdout)
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        log.warning("core steadiness probe failed: %s", exc)
        return {"error": str(exc)[-300:]}
    return summary

"""Measuring the servers: all up at once, saturation runs and then paced latency points in interleaved rounds."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from benchmarks.serving.config import SATURATED_SHORTFALL, SERVER_CPU, STEADINESS_SECONDS
from benchmarks.serving.probes import (
    both_cores,
    core_steadiness,
    cpu_seconds,
    lag_during,
    loop_lag,
    rss_mb,
    steal_during,
)
from benchmarks.serving.servers import Candidate, served_runtime, started
from benchmarks.serving.wrk import wrk

log = logging.getLogger(__name__)


def saturate(candidate: Candidate, url: str, pid: int, duration: float) -> dict[str, Any]:
    """One closed-loop run at saturation, with the server's CPU seconds per request."""
    cpu_before, cores_before = cpu_seconds(pid), both_cores()
    peak = wrk(url, candidate.path, candidate.body, duration, None)
    cpu = cpu_seconds(pid) - cpu_before
    return {
        "peak_rps": peak["rps"],
        "peak_p99_ms": peak["p99_ms"],
        "errors": peak["errors"],
        "cpu_ms_per_request": 1000 * cpu / max(peak["requests"], 1),
        **steal_during(cores_before),
    }


def latency_points(candidate: Candidate, url: str, pid: int, peak_rps: float, duration: float) -> dict[str, Any]:
    """p50/p99 at 50% and 80% of the server's own peak, wrk paced to a fixed rate, with the server's CPU per request.

    The CPU per request is there because paced requests cost more than saturated ones (fewer ready sockets per loop
    wake-up, smaller batches): a point whose cost exceeds 1/share of the peak's runs saturated. The steal time of
    both cores is there because a host that takes wrk's core delays the requests (wrk's latency counts from each
    request's scheduled time) as surely as one that takes the server's.
    """
    points: dict[str, Any] = {}
    for share in (0.5, 0.8):
        target = share * peak_rps
        cpu_before, lag_before, cores_before = cpu_seconds(pid), loop_lag(url), both_cores()
        paced = wrk(url, candidate.path, candidate.body, duration, target)
        cpu_ms = 1000 * (cpu_seconds(pid) - cpu_before) / max(paced["requests"], 1)
        saturated = paced["rps"] < (1 - SATURATED_SHORTFALL) * target
        point = points[f"at_{int(share * 100)}"] = {
            "target_rps": target,
            "saturated": saturated,
            **paced,
            "cpu_ms_per_request": cpu_ms,
            **steal_during(cores_before),
        }
        if lag_before is not None and (lag_after := loop_lag(url)) is not None:
            point["loop_lag"] = lag_during(lag_before, lag_after)
    return points


def measure_all(
    found: list[Candidate], duration: float, logs: Path, rounds: int, probe: bool = True
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """All servers up at once (idle ones cost nothing); saturation runs and then latency points interleaved in
    rounds; each server's peak, and each of its paced points, keeps its own median round.

    Interleaving spreads bursts of other work on a shared machine over every candidate alike; for an odd count
    the median neither rewards a lucky round nor punishes an unlucky one (for an even count it keeps the worse of
    the middle two). The servers' core is probed for steadiness just before and just after all rounds of latency
    points, a few seconds at each end of them (-> results, steadiness).
    """
    results: dict[str, dict[str, Any]] = {}
    steadiness: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        running = {c.key: stack.enter_context(started(c, logs)) for c in found}
        for c in found:
            wrk(running[c.key][0], c.path, c.body, 1, None)  # warm-up
        runs: dict[str, list[dict[str, Any]]] = {c.key: [] for c in found}
        for _ in range(rounds):
            for c in found:
                url, pid = running[c.key]
                runs[c.key].append(saturate(c, url, pid, duration))
        for c in found:
            results[c.key] = {"label": c.label, **median_round(runs[c.key])}
            runtime = served_runtime(running[c.key][0], c)
            if runtime is not None:
                results[c.key]["runtime"] = runtime
        if probe:
            steadiness["before_latency_points"] = core_steadiness(SERVER_CPU, STEADINESS_SECONDS)
        paced_rounds(found, running, results, duration, rounds)
        if probe:
            steadiness["after_latency_points"] = core_steadiness(SERVER_CPU, STEADINESS_SECONDS)
    return results, steadiness


def paced_rounds(
    found: list[Candidate],
    running: dict[str, tuple[str, int]],
    results: dict[str, dict[str, Any]],
    duration: float,
    rounds: int,
) -> None:
    """The latency points in interleaved rounds, like the peaks; each server's median round kept (-> results)."""
    points: dict[str, list[dict[str, Any]]] = {c.key: [] for c in found}
    for _ in range(rounds):
        for c in found:
            url, pid = running[c.key]
            points[c.key].append(latency_points(c, url, pid, results[c.key]["peak_rps"], duration))
    for c in found:
        result = results[c.key]
        result.update(median_points(points[c.key]))
        result["errors"] += sum(point["errors"] for share in ("at_50", "at_80") for point in result[share]["rounds"])
        result["rss_mb"] = rss_mb(running[c.key][1])
        log.info("%s: %.0f req/s peak, p99 at 80%% %.2f ms", c.label, result["peak_rps"], result["at_80"]["p99_ms"])


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median peak (the lower one for an even count), with every round's peak and errors."""
    ordered = sorted(rounds, key=lambda run: float(run["peak_rps"]))
    return {
        **ordered[(len(ordered) - 1) // 2],
        "peak_rps_rounds": [run["peak_rps"] for run in rounds],
        "cpu_ms_per_request_rounds": [run["cpu_ms_per_request"] for run in rounds],
        "errors": sum(run["errors"] for run in rounds),  # an error in any round shows, not only the median one's
    }


def median_points(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each paced point's round of median p99 (for an even count the higher, i.e. worse, one), chosen point by
    point, as the peak is its median round: one noisy spell of the shared machine then decides no verdict alone.

    The kept round's figures stay as they were measured (its own errors too); every round, whole, is under
    ``rounds`` (the row's error count sums them all).
    """
    kept: dict[str, Any] = {}
    for share in ("at_50", "at_80"):
        runs = [one[share] for one in rounds]
        ordered = sorted(runs, key=lambda point: float(point["p99_ms"]))
        kept[share] = {**ordered[len(ordered) // 2], "rounds": runs}
    return kept

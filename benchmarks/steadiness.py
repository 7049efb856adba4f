"""How steady a CPU core is: how often a fixed loop gets much less done than it does on average.

A latency target at a fixed share of a server's peak assumes the core delivers the same work every few
milliseconds. On a shared or nested virtual machine it may not: the core can run several times slower for tens of
milliseconds. A server loaded to 80% of its peak (its average speed) falls behind in every window where the core
delivers less than 0.8 of its average work, and requests that arrive then wait for the backlog to drain. The
probe replays its trace through an ideal server (a fluid queue) and reports how often that server would be more
than the p99 target behind.

That figure is an upper bound on what the core costs a server, not proof that none can meet the target: the
fluid queue takes arrivals open-loop, while the benchmark's wrk has 64 connections (at most 64 requests queue
behind a stall), and a probe that never sleeps may be descheduled by the host more than a server that idles
between requests. In the benchmark's own runs a bare asyncio protocol met the p99 target at 80% of its peak on
cores this probe called unsteady; so the benchmark names the model-less servers that met the target in the same
run next to a missed verdict, and the probe only says how noisy the core was.

The benchmark runs this probe on the servers' core and prints it next to the latency points.
``python -m benchmarks.steadiness`` prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

WINDOW_S = 0.01
LOADS = (0.8, 0.5)  # the benchmark's paced points, as shares of a server's average speed
BEHIND_MS = 10.0  # the serving p99 target: a backlog longer than this puts arrivals past it


def work_per_window(seconds: float, window: float = WINDOW_S) -> list[int]:
    """Chunks of fixed interpreter work (~1 µs each) finished in each window; 0 when the process got no CPU."""
    windows = max(1, int(seconds / window))
    counts = [0] * windows
    clock = time.perf_counter
    start = clock()
    while True:
        sum(range(48))
        index = int((clock() - start) / window)
        if index >= windows:
            return counts
        counts[index] += 1


def backlog_ms(counts: list[int], load: float, window_ms: float) -> list[float]:
    """An ideal server's backlog after each window, in ms of work at the average speed (a fluid queue).

    Work arrives at ``load`` x the average rate and the server does what the core gave it in each window; what is
    left over waits. In this model a request arriving with the backlog at B ms waits about B ms.
    """
    mean = sum(counts) / len(counts)
    backlog, out = 0.0, []
    for count in counts:
        backlog = max(0.0, backlog + load * mean - count)
        out.append(backlog / mean * window_ms)
    return out


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]  # nearest rank


def summarise(counts: list[int], window: float = WINDOW_S, behind_ms: float = BEHIND_MS) -> dict[str, Any]:
    """For each load: the share of windows an ideal server would end more than ``behind_ms`` behind, and its p99
    backlog; plus the p99 window's slowdown against the average and the windows with no work at all."""
    if not counts or sum(counts) == 0:
        raise ValueError("no work was measured: the probe ran for less than one window or got no CPU")
    mean = sum(counts) / len(counts)
    window_ms = window * 1000
    at_load: dict[str, dict[str, float]] = {}
    for load in LOADS:
        backlog = backlog_ms(counts, load, window_ms)
        at_load[f"{int(load * 100)}%"] = {
            "share_of_windows_behind": sum(b > behind_ms for b in backlog) / len(backlog),
            "p99_backlog_ms": _p99(backlog),
        }
    return {
        "window_ms": window_ms,
        "windows": len(counts),
        "behind_ms": behind_ms,
        "mean_chunks_per_window": mean,
        "ideal_server_at_load": at_load,
        "p99_window_slowdown": _p99([mean / max(count, 1) for count in counts]),
        "windows_without_work": sum(count == 0 for count in counts),
    }


def describe(summary: dict[str, Any]) -> str:
    """One line for a report: how far behind an ideal server at 80% and 50% load would have fallen on this core."""
    at80, at50 = summary["ideal_server_at_load"]["80%"], summary["ideal_server_at_load"]["50%"]
    return (
        f"an ideal server at 80% load would have been over {summary['behind_ms']:g} ms behind after "
        f"{at80['share_of_windows_behind']:.1%} of the {summary['window_ms']:g}-ms windows (p99 backlog "
        f"{at80['p99_backlog_ms']:.1f} ms), at 50% load after {at50['share_of_windows_behind']:.1%}; "
        f"p99 window {summary['p99_window_slowdown']:.1f}x slower than average"
    )


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value}: must be positive")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.steadiness", description=__doc__)
    parser.add_argument("--seconds", type=_positive, default=3.0)
    parser.add_argument("--window-ms", type=_positive, default=WINDOW_S * 1000)
    parser.add_argument("--behind-ms", type=_positive, default=BEHIND_MS, help="the latency target to judge by")
    args = parser.parse_args(argv)
    window = args.window_ms / 1000
    summary = summarise(work_per_window(args.seconds, window), window, args.behind_ms)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

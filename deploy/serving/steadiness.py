"""How steady a CPU core is: how often a fixed loop gets much less done than it does on average.

A latency target at a fixed share of a server's peak assumes the core delivers the same work every few
milliseconds. On a shared or nested virtual machine it does not: the host runs other work on the same physical
core, and ours runs several times slower for tens of milliseconds. A server loaded to 80% of its peak (its
average speed) falls behind in every window where the core delivers less than 0.8 of its average work, and the
requests that arrive then wait for the backlog to drain: its p99 measures the host, not the server.

The benchmark runs this probe on the servers' core and prints it next to the latency points, so a missed p99
target can be read against the machine it was measured on. ``python -m deploy.serving.steadiness`` prints the
summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

WINDOW_S = 0.01
# A server at share s of its peak falls behind in a window with less than s of the average work: 1/s slower.
LOADS = (0.8, 0.5, 0.25)


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


def summarise(counts: list[int], window: float = WINDOW_S) -> dict[str, Any]:
    """Each window's work against the average: the share of windows in which a server at each load falls behind.

    ``slowdown`` of a window is average work / its work (a window with no work counts as one chunk).
    """
    if not counts or sum(counts) == 0:
        raise ValueError("no work was measured: the probe ran for less than one window or got no CPU")
    mean = sum(counts) / len(counts)
    slowdowns = sorted(mean / max(count, 1) for count in counts)
    behind = {f"{int(load * 100)}%": sum(count < load * mean for count in counts) / len(counts) for load in LOADS}
    return {
        "window_ms": window * 1000,
        "windows": len(counts),
        "mean_chunks_per_window": mean,
        "share_of_windows_behind_at_load": behind,
        "p99_slowdown": slowdowns[min(len(slowdowns) - 1, int(0.99 * len(slowdowns)))],
        "max_slowdown": slowdowns[-1],
    }


def describe(summary: dict[str, Any]) -> str:
    """One line for a report: where a server at 80% and 50% load would fall behind on this core."""
    behind = summary["share_of_windows_behind_at_load"]
    return (
        f"in {behind['80%']:.1%} of {summary['window_ms']:g}-ms windows the core did less than 80% of its average "
        f"work (a server at 80% load falls behind there), in {behind['50%']:.1%} less than half; "
        f"p99 window {summary['p99_slowdown']:.1f}x slower than average, worst {summary['max_slowdown']:.1f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.serving.steadiness", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--window-ms", type=float, default=WINDOW_S * 1000)
    args = parser.parse_args(argv)
    window = args.window_ms / 1000
    summary = summarise(work_per_window(args.seconds, window), window)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

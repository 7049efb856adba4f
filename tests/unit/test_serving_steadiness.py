"""The core steadiness probe: windows of fixed work, and where a loaded server would fall behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deploy.serving.steadiness import describe, summarise, work_per_window


def test_a_steady_core_has_no_window_behind() -> None:
    summary = summarise([500] * 200)
    assert summary["share_of_windows_behind_at_load"] == {"80%": 0.0, "50%": 0.0, "25%": 0.0}
    assert summary["p99_slowdown"] == 1.0 and summary["max_slowdown"] == 1.0
    assert summary["windows"] == 200 and summary["window_ms"] == 10.0


def test_slow_windows_are_counted_against_the_average_work() -> None:
    counts = [1000] * 90 + [500] * 6 + [100] * 3 + [0]  # average 933
    summary = summarise(counts)
    behind = summary["share_of_windows_behind_at_load"]
    assert behind == {"80%": 0.10, "50%": 0.04, "25%": 0.04}
    assert summary["max_slowdown"] == pytest.approx(933.0)  # a window with no work counts as one chunk
    assert summary["p99_slowdown"] == pytest.approx(933.0)
    assert describe(summary).startswith("in 10.0% of 10-ms windows the core did less than 80%")


def test_no_work_at_all_is_an_error_not_a_perfect_score() -> None:
    with pytest.raises(ValueError, match="no work was measured"):
        summarise([0, 0, 0])
    with pytest.raises(ValueError):
        summarise([])


def test_the_probe_measures_every_window() -> None:
    counts = work_per_window(0.05, 0.01)
    assert len(counts) == 5 and sum(counts) > 0


def test_the_module_prints_its_summary_as_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "deploy.serving.steadiness", "--seconds", "0.1", "--window-ms", "20"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    summary = json.loads(out)
    assert summary["windows"] == 5 and summary["window_ms"] == 20.0 and summary["mean_chunks_per_window"] > 0

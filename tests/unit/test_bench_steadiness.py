"""The core steadiness probe: windows of fixed work, replayed through an ideal server at the benchmark's loads."""

from __future__ import annotations

import json

import pytest

from benchmarks.steadiness import backlog_ms, describe, main, summarise, work_per_window


def test_a_steady_core_leaves_an_ideal_server_never_behind() -> None:
    summary = summarise([500] * 200)
    assert summary["ideal_server_at_load"] == {
        "80%": {"share_of_windows_behind": 0.0, "p99_backlog_ms": 0.0},
        "50%": {"share_of_windows_behind": 0.0, "p99_backlog_ms": 0.0},
    }
    assert summary["p99_window_slowdown"] == 1.0 and summary["windows_without_work"] == 0
    assert summary["windows"] == 200 and summary["window_ms"] == 10.0 and summary["behind_ms"] == 10.0


def test_the_backlog_grows_in_slow_windows_and_drains_in_fast_ones() -> None:
    # average 100 chunks per window; at 80% load 80 arrive per window
    counts = [120, 120, 20, 20, 120, 120, 120, 120, 120, 120]
    assert backlog_ms(counts, 0.8, 10.0) == pytest.approx([0, 0, 6, 12, 8, 4, 0, 0, 0, 0])
    assert backlog_ms(counts, 0.5, 10.0) == pytest.approx([0, 0, 3, 6, 0, 0, 0, 0, 0, 0])


def test_slow_windows_are_judged_by_how_far_behind_they_leave_a_server() -> None:
    counts = [120, 120, 20, 20, 120, 120, 120, 120, 120, 120]
    summary = summarise(counts)
    assert summary["ideal_server_at_load"]["80%"] == {"share_of_windows_behind": 0.1, "p99_backlog_ms": 12.0}
    assert summary["ideal_server_at_load"]["50%"] == {"share_of_windows_behind": 0.0, "p99_backlog_ms": 6.0}
    assert summary["p99_window_slowdown"] == pytest.approx(5.0)  # nearest rank: the 10th of 10 windows
    assert describe(summary).startswith(
        "an ideal server at 80% load would have been over 10 ms behind after 10.0% of the 10-ms windows "
        "(p99 backlog 12.0 ms), at 50% load after 0.0%"
    )
    brief_dips = summarise(([120] * 19 + [70]) * 5)  # short of 80% now and then, never for long
    assert brief_dips["ideal_server_at_load"]["80%"]["share_of_windows_behind"] == 0.0


def test_the_p99_is_the_nearest_rank_not_the_maximum() -> None:
    summary = summarise([100] * 99 + [0])  # one window with no work at all
    assert summary["windows_without_work"] == 1
    assert summary["p99_window_slowdown"] == pytest.approx(0.99)


def test_no_work_at_all_is_an_error_not_a_perfect_score() -> None:
    with pytest.raises(ValueError, match="no work was measured"):
        summarise([0, 0, 0])
    with pytest.raises(ValueError):
        summarise([])


def test_the_probe_measures_every_window() -> None:
    counts = work_per_window(0.05, 0.01)
    assert len(counts) == 5 and sum(counts) > 0


def test_the_module_prints_its_summary_as_json_and_refuses_a_zero_window(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seconds", "0.1", "--window-ms", "20", "--behind-ms", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["windows"] == 5 and summary["window_ms"] == 20.0 and summary["behind_ms"] == 5.0
    with pytest.raises(SystemExit) as refused:
        main(["--seconds", "0.1", "--window-ms", "0"])
    assert refused.value.code == 2 and "must be positive" in capsys.readouterr().err

"""Progress of long work: a bar on a terminal, a log line every few seconds elsewhere (mlrelease.core.progress),
and its users: training, the export latency runs, the load test and the canary analysis."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest

from mlrelease.core.progress import (
    BarProgress,
    LogProgress,
    duration,
    every_seconds,
    format_figures,
    on_terminal,
    progress,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A stream that says it is an interactive terminal."""

    def isatty(self) -> bool:
        return True


class Lines:
    """The log messages so far, read when asked (caplog's list is made afresh on each read)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def __iter__(self):
        return iter(self.caplog.messages)

    def __len__(self) -> int:
        return len(self.caplog.messages)

    def __getitem__(self, index: int) -> str:
        return self.caplog.messages[index]

    def __eq__(self, other: object) -> bool:
        return self.caplog.messages == other


@pytest.fixture
def log_lines(caplog: pytest.LogCaptureFixture) -> Lines:
    caplog.set_level(logging.INFO)
    return Lines(caplog)


def test_log_lines_come_a_second_in_then_every_few_seconds_and_at_the_end(
    log_lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLRELEASE_PROGRESS", raising=False)
    clock = Clock()
    with progress("train", 40, unit="epochs", log=logging.getLogger("t"), every_s=5, clock=clock) as bar:
        assert isinstance(bar, LogProgress)
        bar.update(0.2)
        assert log_lines == []  # quick work shows only its final line
        clock.now += 1.0
        bar.update(2, train_loss=0.5, best_epoch=2)
        clock.now += 2.0
        bar.update(3)
        clock.now += 3.5
        bar.update(4.5, total=50, val_loss=0.25)
        clock.now += 1.0
        bar.update(5)
    assert len(log_lines) == 3, log_lines
    assert log_lines[0].startswith("train: 2/40 epochs (5%), train loss 0.5, best epoch 2; 1 s elapsed, ETA 19 s")
    assert "4.5/50 epochs" in log_lines[1] and "val loss 0.25" in log_lines[1]
    assert log_lines[2].startswith("train: 5/50 epochs (10%)")


def test_a_note_is_always_shown_and_restarts_the_wait(log_lines: Lines) -> None:
    clock = Clock()
    with progress("canary analysis", 3, unit="steps", log=logging.getLogger("c"), every_s=5, clock=clock) as bar:
        clock.now += 10
        bar.note("step 5%: passed (canary 80 req)")
        bar.update(1, weight=5)
        assert log_lines == ["canary analysis: step 5%: passed (canary 80 req)"]
    assert log_lines[-1].startswith("canary analysis: 1/3 steps (33%), weight 5;")


def test_a_terminal_gets_a_bar_with_figures_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLRELEASE_PROGRESS", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    out = Terminal()
    with progress("train", 10, unit="epochs", stream=out) as bar:
        assert isinstance(bar, BarProgress)
        bar.update(4, train_loss=0.125, patience_left=16)
        bar.note("a line above the bar")
    text = out.getvalue()
    assert "train" in text and "4/10 epochs" in text and "train loss 0.125" in text and "patience left 16" in text
    assert "ETA" in text and "a line above the bar" in text


def test_the_mode_follows_the_stream_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLRELEASE_PROGRESS", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    assert not on_terminal(io.StringIO())
    assert on_terminal(Terminal())
    monkeypatch.setenv("MLRELEASE_PROGRESS", "log")
    assert not on_terminal(Terminal())


@pytest.mark.parametrize(("raw", "seconds"), [("", 5.0), ("2", 2.0), ("0", 5.0), ("-1", 5.0), ("soon", 5.0)])
def test_seconds_between_lines_come_from_the_environment(raw: str, seconds: float) -> None:
    assert every_seconds({"MLRELEASE_PROGRESS_SECONDS": raw}) == seconds


def test_durations_and_figures_read_well() -> None:
    assert [duration(s) for s in (0.4, 42, 185, 3725)] == ["0 s", "42 s", "3 min 05 s", "1 h 02 min"]
    assert format_figures({"train_loss": 0.123456, "best_epoch": 3, "none": None}) == "train loss 0.1235, best epoch 3"


def test_training_reports_epoch_losses_best_epoch_and_patience(
    log_lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlrelease.core.params import load_params
    from pipelines.common import Split
    from pipelines.train import train_model

    monkeypatch.setenv("MLRELEASE_PROGRESS", "log")
    monkeypatch.setenv("MLRELEASE_PROGRESS_SECONDS", "0.001")
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    params = params.model_copy(update={"train": params.train.model_copy(update={"max_epochs": 3, "patience": 2})})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    split = Split(x, (x[:, 0] > 0).astype(np.int64))
    train_model(params, split, split, n_classes=2)
    epoch_lines = [line for line in log_lines if line.startswith("train: ") and "patience left" in line]
    assert epoch_lines, log_lines
    last = epoch_lines[-1]
    assert "/" in last and "epochs" in last and "train loss" in last and "val loss" in last and "best epoch" in last


def test_export_latency_runs_report_progress(log_lines: Lines, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from mlrelease.core.params import ExportParams
    from pipelines.export import latency_gates

    monkeypatch.setenv("MLRELEASE_PROGRESS", "log")
    model = torch.jit.script(torch.nn.Linear(4, 2))
    cfg = ExportParams.model_validate({"latency_warmup": 1, "latency_runs": 10})
    latency, gates = latency_gates(model, np.ones((3, 4), dtype=np.float32), cfg)
    assert log_lines[-1].startswith("export latency: 20/20 runs (100%), batch 32")
    assert [q for q, _ in latency["batch_1"]["distribution"]][:3] == [0, 5, 10] and len(gates) == 2


def test_the_load_test_progress_reads_locusts_history(tmp_path: Path) -> None:
    from deploy.loadtest.runner import live_progress, stats_history

    history = tmp_path / "locust_stats_history.csv"
    history.write_text(
        "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n"
        "1000,10,,Aggregated,0.000000,0.000000,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n"
        "1001,10,POST,/predict,480.0,0.0,4,4,5,5,5,6,7,8,9,9,9\n"
        "1001,10,,Aggregated,480.000000,0.000000,4,4,5,5,5,6,7,8,9,9,9\n"
        "1002,10,,Aggregated,500.000000,1.000000,4,4,5,5,6,7,8,9,10,10,10\n"
    )
    points = stats_history(history)
    assert [p["t"] for p in points] == [0.0, 1.0] and points[1]["p99_ms"] == 9.0 and points[1]["rps"] == 500.0
    clock, seen, stops = Clock(), [], []
    bar = LogProgress("loadtest", 10, "s", logging.getLogger("l"), 5.0, clock)
    bar.update = lambda completed=None, **figures: seen.append((completed, figures))  # type: ignore[method-assign]
    tick = live_progress(bar, history, lambda: stops.append(1), clock)
    clock.now += 3
    tick()
    assert stops == [1] and seen[0][0] == 3 and seen[0][1]["p95_ms"] == 7.0 and seen[0][1]["rps"] == 500.0


def test_a_long_load_tests_history_is_thinned_for_the_report() -> None:
    from deploy.loadtest.runner import thinned

    points = [{"t": float(t)} for t in range(3600)]
    kept = thinned(points, 300)
    assert len(kept) == 300 and kept[0]["t"] == 0 and kept[-1]["t"] == 3599 and kept[1]["t"] == 12
    assert thinned(points[:10], 300) == points[:10]


def test_a_canary_interval_line_shows_each_checks_value() -> None:
    from release.analysis import Measurement
    from release.canary import _summary

    m = Measurement(5.0, "passed", [], 40, 760, 0.0, 0.0, 12.5, 11.0, 0.01)
    m.canary_client_error_rate, m.stable_client_error_rate = 0.0, 0.001
    line = _summary(m)
    for part in ("canary 40 req", "errors 0.00%", "4xx 0.00% vs 0.10%", "p99 12.5 ms vs 11.0 ms", "traffic share 5.0%"):
        assert part in line, line
    assert "divergence 0.010" in line


def test_the_image_build_progress_follows_the_engines_steps() -> None:
    from deploy.image.build import step_progress

    seen: list[tuple[object, dict[str, object]]] = []

    class Bar:
        def update(self, completed: object = None, **figures: object) -> None:
            seen.append((completed, figures))

    on_line = step_progress(Bar())  # type: ignore[arg-type]
    for line in ("[2/3] STEP 3/5: RUN pip install", "STEP 2/4: COPY model/ /opt/model", "#8 [app 2/3] RUN x", "noise"):
        on_line(line)
    assert seen[0] == (1.4, {"total": 3, "step": "3/5 RUN pip install"})
    assert seen[1] == (0.25, {"total": 1, "step": "2/4 COPY model/ /opt/model"})
    assert seen[2] == (None, {"step": "2/3 RUN x"}) and len(seen) == 3


@pytest.mark.integration
def test_an_engine_command_streams_its_lines_and_fails_with_its_tail() -> None:
    import sys

    from deploy.engine import Engine, EngineError

    engine = Engine("buildah", sys.executable)
    lines: list[str] = []
    engine.stream("-c", "print('STEP 1/2: FROM base'); print('STEP 2/2: RUN true')", on_line=lines.append)
    assert lines == ["STEP 1/2: FROM base", "STEP 2/2: RUN true"]
    with pytest.raises(EngineError, match=r"exit 3.*boom"):
        engine.stream("-c", "import sys; print('boom'); sys.exit(3)", on_line=lines.append)
    with pytest.raises(EngineError, match="did not finish within 1 s"):
        engine.stream("-c", "import time; time.sleep(30)", on_line=lines.append, timeout=1)

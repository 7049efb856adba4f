"""The in-process HTTP-layer benchmark runs both protocols on the same request and counts an answer for each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_http_layer import main


def test_both_layers_answer_every_request_and_are_timed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "http.json"
    assert main(["--requests", "300", "--rounds", "1", "--out", str(out)]) == 0  # a layer that missed an answer raises
    report = json.loads(out.read_text())
    assert set(report["us_per_request"]) == {"uvicorn_fast_path", "plain"}
    assert all(value > 0 for value in report["us_per_request"].values())
    assert "us/request" in capsys.readouterr().out

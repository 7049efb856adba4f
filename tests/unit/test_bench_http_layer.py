"""The in-process HTTP-layer benchmark runs both protocols on the same request and counts an answer for each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_http_layer.py"


def test_both_layers_answer_every_request_and_are_timed(tmp_path: Path) -> None:
    out = tmp_path / "http.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--requests", "300", "--rounds", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr  # a layer that missed an answer raises
    report = json.loads(out.read_text())
    assert set(report["us_per_request"]) == {"uvicorn_fast_path", "plain"}
    assert all(value > 0 for value in report["us_per_request"].values())
    assert "us/request" in proc.stdout

"""The prepare stage's entry point (what `python -m pipelines.prepare` runs under DVC) on each broken data file of
tests/bad_data.py: it fails naming the column and the check, writes its report, and writes no split. In this process:
the stage's wiring as a process is what every `dvc repro` of tests/integration runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlrelease.core.params import run_stage
from pipelines.prepare import main
from tests.bad_data import CASES, BadCase

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_source_fails_prepare_with_a_clear_report(
    case: BadCase, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each broken file fails the first stage naming the column and check; nothing downstream runs."""
    source = tmp_path / f"{case.name}.csv"
    case.make(source)
    params = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text().replace("datasets/breast_cancer.sklearn", str(source))
    params.write_text(text.replace("schemas/breast_cancer.yaml", str(REPO / "schemas" / "breast_cancer.yaml")))
    report = tmp_path / "report.json"
    monkeypatch.chdir(REPO)  # as DVC runs it: from the repository root
    argv = ["--out", str(tmp_path / "out"), "--report", str(report), "--params", str(params)]
    code = run_stage("prepare", lambda: main(argv))
    stderr = capsys.readouterr().err
    assert code == 1, stderr
    assert case.column in stderr and case.check in stderr, stderr
    assert "Fix the data" in stderr
    assert json.loads(report.read_text())["valid"] is False
    assert not (tmp_path / "out").exists()

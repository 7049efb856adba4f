"""`mlrelease history`: the audit trail as a table (evidence in short on request) or as JSON lines in full."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlrelease.commands.release import short_evidence
from registry.audit import AuditLog, AuditRecord


def test_short_evidence_names_nested_values_without_printing_them() -> None:
    evidence = {"warm": True, "measurements": [{"a": 1}] * 3, "smoke": {"rows": 8, "ok": True}}
    assert short_evidence(evidence) == "warm=True; measurements=[3 items]; smoke={rows, ok}"
    assert short_evidence({"payload": "x" * 500}, width=20) == "payload=" + "x" * 11 + "…"
    assert short_evidence({}) == ""


def test_history_json_gives_every_record_in_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlrelease.cli import app
    from mlrelease.settings import get_settings

    monkeypatch.setenv("MLRELEASE_HOME", str(tmp_path))
    get_settings.cache_clear()
    log = AuditLog(tmp_path / ".mlrelease")
    log.append(AuditRecord("promote", "staging", "ana", to_version="3", evidence={"payload": "114 rows"}))
    log.append(AuditRecord("rollback", "production", "bo", to_version="2", from_version="3", reason="p99"))
    try:
        runner = CliRunner()
        lines = runner.invoke(app, ["history", "--json"]).output.splitlines()
        records = [json.loads(line) for line in lines]
        assert [(r["action"], r["by"], r["evidence"]) for r in records] == [
            ("promote", "ana", {"payload": "114 rows"}),
            ("rollback", "bo", {}),
        ]
        table = runner.invoke(app, ["history", "--evidence", "--limit", "1"]).output
        assert "rollback" in table and "promote" not in table and "evidence" in table
    finally:
        get_settings.cache_clear()

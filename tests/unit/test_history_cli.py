"""`mlrelease history`: the audit trail as a table (evidence in short on request) or as JSON lines in full."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlrelease.commands.release import short_evidence
from release.audit import AuditLog, AuditRecord


def test_short_evidence_names_nested_values_without_printing_them() -> None:
    evidence = {"warm": True, "measurements": [{"a": 1}] * 3, "smoke": {"rows": 8, "ok": True}}
    assert short_evidence(evidence) == "warm=True; measurements=[3 items]; smoke={rows, ok}"
    assert short_evidence({"payload": "x" * 500}, width=20) == "payload=" + "x" * 11 + "…"
    assert short_evidence({}) == ""


def test_history_json_gives_every_record_in_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlrelease.cli import app
    from mlrelease.core.settings import get_settings

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


def test_history_and_status_show_a_rollback_under_way_before_its_record_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback writes its audit record when it ends: until then the journal is the only trace of it."""
    import os

    from mlrelease.cli import app
    from mlrelease.core.settings import get_settings
    from release.journal import Journal, Operation

    monkeypatch.setenv("MLRELEASE_HOME", str(tmp_path))
    get_settings.cache_clear()
    store = Journal(tmp_path / ".mlrelease")
    state = store.load()
    state.operation = Operation(
        command="rollback", version="2", pid=2**22 + 7, by="oncall", started_at=0.0, from_version="3", reason="p99"
    )
    store.save(state)
    try:
        runner = CliRunner()
        said = " ".join(runner.invoke(app, ["history"]).output.split())
        assert (
            "in progress: `rollback` to version 2 from version 3 by oncall since 1970-01-01 00:00:00 UTC (p99), "
            "interrupted (pid 4194311 is gone): run scripts/rollback.sh to finish it"
        ) in said
        assert "in progress" not in runner.invoke(app, ["history", "--json"]).output
        state.operation = Operation(command="promote canary", version="4", pid=os.getpid(), by="rm")
        store.save(state)
        said = " ".join(runner.invoke(app, ["status"]).output.split())
        assert (
            "in progress: `promote canary` to version 4 by rm since" in said and f"running (pid {os.getpid()})" in said
        )
        state.operation = None
        store.save(state)
        assert "in progress" not in runner.invoke(app, ["history"]).output
    finally:
        get_settings.cache_clear()

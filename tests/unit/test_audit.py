"""Audit trail: append-only fsynced JSONL, dry runs not recorded, torn lines skipped, actor resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from release.audit import AuditLog, AuditRecord, record, resolve_actor


def test_append_and_read_back_in_order(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append(
        AuditRecord(
            "promote",
            "staging",
            "alice",
            to_version="2",
            alias="staging",
            evidence={"report": "reports/x.json", "p99_ms": 4.2},
        )
    )
    log.append(AuditRecord("rollback", "production", "bob", to_version="1", from_version="2", reason="pager"))
    records = log.records()
    assert [r["action"] for r in records] == ["promote", "rollback"]
    assert records[0]["evidence"]["p99_ms"] == 4.2
    assert records[1]["from_version"] == "2" and records[1]["when"].endswith("Z")
    first_line = log.path.read_text().splitlines()[0]
    log.append(AuditRecord("traffic", "production", "carol"))
    assert log.path.read_text().splitlines()[0] == first_line  # appends never rewrite history


def test_dry_run_is_not_recorded(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append(AuditRecord("promote", "production", "alice", dry_run=True))
    assert log.records() == []


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append(AuditRecord("promote", "staging", "alice"))
    with log.path.open("a") as handle:
        handle.write('{"action": "prom')  # a crash mid-write
    assert [r["action"] for r in log.records()] == ["promote"]
    assert json.loads(log.path.read_text().splitlines()[0])["by"] == "alice"


def test_a_registry_that_cannot_even_give_a_client_loses_no_record(tmp_path: Path) -> None:
    """The durable log line is written before the registry client is made: a forced or rollback record is never
    lost to a registry outage."""

    def unreachable() -> object:
        raise ConnectionError("registry refused the connection")

    log = AuditLog(tmp_path)
    record(log, AuditRecord("promote", "production", "alice", to_version="2", outcome="forced"), "m", unreachable)
    assert [(r["action"], r["outcome"]) for r in log.records()] == [("promote", "forced")]


@pytest.mark.integration  # starts a process
def test_actor_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRELEASE_BY", "env-user")
    monkeypatch.setenv("GITHUB_ACTOR", "gh-user")
    assert resolve_actor("cli-user") == "cli-user"
    assert resolve_actor(None) == "env-user"
    monkeypatch.delenv("MLRELEASE_BY")
    assert resolve_actor(None) == "gh-user"
    monkeypatch.delenv("GITHUB_ACTOR")
    assert resolve_actor("  ") != ""

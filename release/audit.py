"""Append-only audit trail of every alias and traffic change: a fsynced JSONL log plus MLflow version tags.

Each record says who, when, what (action, environment, alias), from which version to which, why, and the gate
evidence (report paths and values). The log is the durable copy (it survives a registry outage); tags put the
same record on the model versions themselves, where registry users look.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
AUDIT_FILE = "audit.jsonl"
TAG_PREFIX = "mlrelease.audit."
MAX_TAG_CHARS = 5000


@dataclass
class AuditRecord:
    """One change: an alias move, a traffic shift, a rollback, an aborted promotion."""

    action: str
    environment: str
    by: str
    to_version: str | None = None
    from_version: str | None = None
    alias: str | None = None
    weights: dict[str, float] | None = None
    reason: str = ""
    outcome: str = "done"
    evidence: dict[str, Any] = field(default_factory=dict)
    image_digest: str | None = None  # the serving image of ``to_version`` (its registry tag), on every move
    dry_run: bool = False
    at: float = field(default_factory=time.time)

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "when": self.when}, sort_keys=True, default=str)


def resolve_actor(by: str | None = None) -> str:
    """Who is acting: ``--by``, else MLRELEASE_BY / GITHUB_ACTOR, else git's user.email, else the OS user."""
    for value in (by, os.environ.get("MLRELEASE_BY"), os.environ.get("GITHUB_ACTOR")):
        if value and value.strip():
            return value.strip()
    try:
        email = subprocess.run(["git", "config", "user.email"], capture_output=True, text=True, timeout=5)
        if email.returncode == 0 and email.stdout.strip():
            return email.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return getpass.getuser()


class AuditLog:
    """The JSONL log under the state folder; appends are O_APPEND writes followed by fsync."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / AUDIT_FILE

    def append(self, record: AuditRecord) -> None:
        """Write one line durably; a dry run is never recorded."""
        if record.dry_run:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (record.to_json() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        """Every record, oldest first; a torn last line (crash mid-write) is skipped with a warning."""
        if not self.path.is_file():
            return []
        out: list[dict[str, Any]] = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: unreadable audit line skipped", self.path, number)
        return out


def tag_versions(record: AuditRecord, model_name: str, client: Any) -> None:
    """Put the record on the versions it touched as an MLflow tag (one key per record, never overwritten)."""
    if record.dry_run:
        return
    key = f"{TAG_PREFIX}{int(record.at * 1000)}.{record.action}"
    value = record.to_json()[:MAX_TAG_CHARS]
    for version in {v for v in (record.to_version, record.from_version) if v}:
        client.set_model_version_tag(model_name, version, key, value)


def record(log_: AuditLog, entry: AuditRecord, model_name: str, client_of: Callable[[], Any]) -> None:
    """Durable log first, then the registry tags (a registry failure is logged, the log line stays). The client is
    made only after the log line is written (``client_of``): a registry that cannot even be reached loses no
    record."""
    log_.append(entry)
    try:
        tag_versions(entry, model_name, client_of())
    except Exception as exc:  # the durable log already holds the record
        log.warning("audit record kept in %s but not tagged in MLflow: %s", log_.path, exc)

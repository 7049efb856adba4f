"""The release journal: the operation in flight, the last rollback and production's history, in its own file.

A journaled command that dies (kill -9, a reboot) leaves its entry; the next command recovers it before anything
else (see :mod:`release.recovery`). One JSON document (``journal.json`` in the state folder), written atomically,
so a crash leaves the old or the new journal, never half of one. A rollback's abort request (a file a running
promotion checks) lives beside it.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mlrelease.core.files import read_model, write_model
from release.states import Command

JOURNAL_FILE = "journal.json"
LEGACY_STATE_FILE = "state.json"  # before the journal had its own file, it lived in the local target's state
ABORT_FILE = "abort.request"


class Operation(BaseModel):
    """A command in flight: lets a re-run after a crash complete or undo it."""

    model_config = ConfigDict(extra="forbid")

    command: Command
    version: str
    pid: int
    by: str
    started_at: float = Field(default_factory=time.time)
    from_version: str | None = None  # a rollback: the version it moves away from, so a re-run can finish it
    reason: str | None = None
    forced: bool = False  # run with --force: recovery that finishes it records it as forced, as the command would


class RollbackMark(BaseModel):
    """The last rollback, so that running it twice is a no-op instead of a second step back."""

    model_config = ConfigDict(extra="forbid")

    from_version: str
    to_version: str
    at: float
    by: str | None = None  # who started it (None in a mark written before these fields)
    reason: str | None = None  # as recorded, the reasons of the runs that joined it included
    pid: int | None = None  # the process that started it
    finished_by: str | None = None  # a later run that finished it, when not the one that started it

    def said(self) -> str:
        """When, by whom and why, for "already rolled back ..." (empty for a mark without them)."""
        if self.by is None:
            return ""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))
        pid = f"pid {self.pid}, " if self.pid is not None else ""
        finished = f", finished by {self.finished_by}" if self.finished_by else ""
        return f" at {when} by {self.by} ({pid}reason: {self.reason or 'none given'}{finished})"


class JournalState(BaseModel):
    """Everything orchestration remembers between commands (the target remembers what runs where)."""

    model_config = ConfigDict(extra="forbid")

    operation: Operation | None = None
    last_rollback: RollbackMark | None = None
    production_history: list[str] = Field(default_factory=list)

    def record_production(self, version: str) -> None:
        """Append ``version`` to production's history once (a re-run finishing the same switch adds nothing)."""
        if self.production_history[-1:] != [version]:
            self.production_history.append(version)


class Journal:
    """Reads and atomically writes the journal file of one state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / JOURNAL_FILE

    def load(self) -> JournalState:
        """The journal; an empty one when nothing was journaled yet (or what an older state file held)."""
        hint = "inspect it, or move it aside once no promotion or rollback is under way (`mlrelease status`)"
        found = read_model(self.path, JournalState, "release journal", hint)
        return found if found is not None else self._legacy()

    def save(self, state: JournalState) -> None:
        """Write the journal atomically."""
        write_model(self.path, state)

    def set_operation(self, op: Operation | None) -> None:
        """Journal ``op`` as the command in flight (None: none is)."""
        state = self.load()
        state.operation = op
        self.save(state)

    def _legacy(self) -> JournalState:
        """The journal fields of a state file written before the journal had its own file (an interrupted
        rollback must survive an upgrade)."""
        legacy = self.state_dir / LEGACY_STATE_FILE
        try:
            data = json.loads(legacy.read_text())
        except (OSError, ValueError):
            return JournalState()
        fields = {k: data[k] for k in ("operation", "last_rollback", "production_history") if data.get(k)}
        try:
            return JournalState.model_validate(fields)
        except ValueError:
            return JournalState()


@dataclass
class AbortRequest:
    """A rollback's request that the promotion holding the lock stop (a file that promotion checks): made only
    just before this rollback waits for the lock, so a rollback with nothing to do never stops a promotion nor
    removes another's request. Withdrawn once it holds the lock (a rollback waiting on the same request then waits
    behind a rollback, which never checks it) or when it ends; kept when it gave up waiting."""

    path: Path
    made: bool = False

    def make(self) -> None:
        """Ask the running promotion to stop (no state folder: nothing runs, nothing to ask)."""
        if self.path.parent.is_dir():
            self.path.touch()
            self.made = True

    def withdraw(self) -> None:
        """Remove this rollback's own request, if it made one."""
        if self.made:
            self.path.unlink(missing_ok=True)
            self.made = False


def abort_requested(state_dir: Path) -> bool:
    """True when a rollback asked the promotion holding the lock to stop."""
    return (Path(state_dir) / ABORT_FILE).exists()


def clear_stale_abort(state_dir: Path, older_than_s: float) -> None:
    """An abort request older than a rollback's lock wait was left by a rollback that gave up waiting: it was
    for the promotion that held the lock then, not for the one starting now."""
    abort = Path(state_dir) / ABORT_FILE
    with contextlib.suppress(FileNotFoundError):
        if time.time() - abort.stat().st_mtime > older_than_s:
            abort.unlink()

"""The deployment state file: which process serves which version on which port, at which weight.

One JSON document under ``Settings().state_dir``, written atomically (temp file + fsync + os.replace) so a crash
at any point leaves either the old or the new state on disk, never half of one.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

STATE_FILE = "state.json"


class Slot(BaseModel):
    """One running server: a model version on a loopback port."""

    model_config = ConfigDict(extra="forbid")

    version: str
    port: int
    pid: int
    model_name: str
    bundle_dir: str
    started_at: float = Field(default_factory=time.time)
    expires_at: float | None = None  # set for a warm previous-production slot

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Environment(BaseModel):
    """An environment's slots (stable, canary, previous, pending) and each routed slot's traffic share in percent."""

    model_config = ConfigDict(extra="forbid")

    slots: dict[str, Slot] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)
    entry_port: int | None = None  # the nginx listener (routed environments only)

    def weight(self, slot: str) -> float:
        """The share of traffic the slot gets, 0 when it is not routed."""
        return self.weights.get(slot, 0.0)


class Operation(BaseModel):
    """A promotion in flight: lets a re-run after a crash complete or undo it."""

    model_config = ConfigDict(extra="forbid")

    command: str
    version: str
    pid: int
    by: str
    started_at: float = Field(default_factory=time.time)
    from_version: str | None = None  # a rollback: the version it moves away from, so a re-run can finish it
    reason: str | None = None


class RollbackMark(BaseModel):
    """The last rollback, so that running it twice is a no-op instead of a second step back."""

    model_config = ConfigDict(extra="forbid")

    from_version: str
    to_version: str
    at: float


class DeployState(BaseModel):
    """Everything the local target knows about what runs where."""

    model_config = ConfigDict(extra="forbid")

    environments: dict[str, Environment] = Field(default_factory=dict)
    production_history: list[str] = Field(default_factory=list)
    last_rollback: RollbackMark | None = None
    operation: Operation | None = None

    def env(self, name: str) -> Environment:
        """The named environment, created empty on first use."""
        return self.environments.setdefault(name, Environment())


class StateStore:
    """Reads and atomically writes the state file in one folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE

    def load(self) -> DeployState:
        """The current state; an empty one if nothing was deployed yet."""
        if not self.path.is_file():
            return DeployState()
        try:
            return DeployState.model_validate_json(self.path.read_text())
        except ValueError as exc:
            raise RuntimeError(
                f"{self.path}: unreadable deployment state ({exc}); inspect it, or move it aside and re-deploy"
            ) from exc

    def save(self, state: DeployState) -> None:
        """Write the state atomically: temp file in the same folder, fsync, rename, fsync the folder."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, state.model_dump_json(indent=2) + "\n")


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new content, never a torn write."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

"""The local target's state file: which process serves which version on which port, at which weight.

One JSON document (``state.json``) in the target's state folder, written atomically so a crash at any point
leaves either the old or the new state on disk, never half of one. The promotion journal is not here: it is
orchestration's, in a file of its own beside this one.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deploy.targets.local.container import ImageRun
from deploy.targets.local.discovery import publish
from mlrelease.core.files import read_model, write_model

STATE_FILE = "state.json"
# Keys of the promotion journal that older versions kept in this file: read and dropped, never an error.
LEGACY_KEYS = ("operation", "last_rollback", "production_history")


class Replica(BaseModel):
    """One server process of a slot: a loopback port and the supervisor program that keeps it running."""

    model_config = ConfigDict(extra="forbid")

    port: int
    program: str = ""  # the supervisord program; "" for a server started before supervision (stopped by pid)
    pid: int = 0  # as last seen; the supervisor restarts a replica under a new pid, so ask it for the live one

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Slot(BaseModel):
    """One model version served by one or more replicas, each on a loopback port."""

    model_config = ConfigDict(extra="forbid")

    version: str
    replicas: list[Replica]
    model_name: str
    bundle_dir: str
    uid: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])  # kept across renames and restarts
    started_at: float = Field(default_factory=time.time)
    expires_at: float | None = None  # set for a warm previous-production slot
    image_run: ImageRun | None = None  # the container runtime's image, by digest; None: processes from the venv

    @model_validator(mode="before")
    @classmethod
    def _one_server(cls, data: Any) -> Any:
        """A slot recorded before replicas (``port`` and ``pid``) loads as one unsupervised replica."""
        if isinstance(data, dict) and "port" in data and "replicas" not in data:
            data = dict(data)
            data["replicas"] = [{"port": data.pop("port"), "pid": data.pop("pid", 0)}]
        return data

    @property
    def port(self) -> int:
        """The first replica's port (a slot's own URL, for probes that need one)."""
        return self.replicas[0].port

    @property
    def pid(self) -> int:
        """The first replica's pid as last seen."""
        return self.replicas[0].pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Environment(BaseModel):
    """An environment's slots (stable, canary, previous, pending) and each routed slot's traffic share in percent."""

    model_config = ConfigDict(extra="forbid")

    slots: dict[str, Slot] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)
    entry_port: int | None = None  # the nginx listener (routed environments only)
    tls_port: int | None = None  # the nginx TLS listener (routed environments only)

    def weight(self, slot: str) -> float:
        """The share of traffic the slot gets, 0 when it is not routed."""
        return self.weights.get(slot, 0.0)


class DeployState(BaseModel):
    """Everything the local target knows about what runs where, and whether warm slots may expire."""

    model_config = ConfigDict(extra="forbid")

    environments: dict[str, Environment] = Field(default_factory=dict)
    expiry_hold: str | None = None  # while set, no warm slot expires: why (a rollback under way)

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_journal(cls, data: Any) -> Any:
        """A state file written before the journal had its own file still loads; its journal keys are ignored."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if key not in LEGACY_KEYS}
        return data

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
        found = read_model(self.path, DeployState, "deployment state", "inspect it, or move it aside and re-deploy")
        return found if found is not None else DeployState()

    def save(self, state: DeployState) -> None:
        """Write the state atomically (see :func:`mlrelease.core.files.atomic_write`), then the replicas for
        Prometheus' file-based discovery (:mod:`.discovery`)."""
        write_model(self.path, state)
        publish(self.state_dir, state.environments)

"""Prometheus file-based service discovery for the local target: every replica as a scrape target labelled with
its environment, slot, version and the slot's traffic weight, rewritten whenever the target saves its state (so
whenever a weight changes).

The file is ``<state folder>/prometheus/targets.json`` (``.mlrelease/prometheus/targets.json`` under
``MLRELEASE_HOME``), in ``file_sd_configs``' JSON format, replaced atomically so Prometheus (which watches it) never
reads half of it. ``deploy/monitoring/prometheus.yml`` scrapes it and keeps ``weight`` on the scrape's own series
(``up``) only: the servers' series keep one identity while the canary's weight moves. This module knows the state
only through the protocols below, so it imports nothing of :mod:`.state`, which calls it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from mlrelease.core.files import atomic_write

log = logging.getLogger(__name__)

SD_DIR = "prometheus"
SD_FILE = "targets.json"


class ReplicaLike(Protocol):
    """A replica as discovery needs it: its loopback port."""

    @property
    def port(self) -> int: ...


class SlotLike(Protocol):
    """A slot as discovery needs it: its version and replicas."""

    @property
    def version(self) -> str: ...
    @property
    def replicas(self) -> Sequence[ReplicaLike]: ...


class EnvironmentLike(Protocol):
    """An environment as discovery needs it: its slots and their traffic weights."""

    @property
    def slots(self) -> Mapping[str, SlotLike]: ...
    def weight(self, slot: str) -> float: ...


def sd_path(state_dir: Path) -> Path:
    """Where the local target writes its scrape targets."""
    return Path(state_dir) / SD_DIR / SD_FILE


def targets(environments: Mapping[str, EnvironmentLike]) -> list[dict[str, object]]:
    """One file_sd entry per replica, sorted: ``127.0.0.1:PORT`` with labels environment, slot, version and weight
    (percent of the environment's traffic, ``0`` when the slot gets none)."""
    return [
        {
            "targets": [f"127.0.0.1:{replica.port}"],
            "labels": {
                "environment": name,
                "slot": slot_name,
                "version": slot.version,
                "weight": f"{env.weight(slot_name):g}",
            },
        }
        for name, env in sorted(environments.items())
        for slot_name, slot in sorted(env.slots.items())
        for replica in slot.replicas
    ]


def publish(state_dir: Path, environments: Mapping[str, EnvironmentLike]) -> None:
    """Replace the targets file with the replicas of ``environments``. Monitoring never stops a deployment: a
    file that cannot be written is a warning."""
    path = sd_path(state_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # derived from the state at every save: no fsync on the rollback's path, the state file has its own
        atomic_write(path, json.dumps(targets(environments), indent=2) + "\n", durable=False)
    except OSError as exc:
        log.warning("Prometheus targets not written to %s: %s", path, exc)

"""Where a version serves now, and its live /metrics page, through the DeploymentTarget interface (reads only)."""

from __future__ import annotations

import logging
from typing import Protocol

from deploy.targets.base import DeploymentError, DeploymentTarget
from release.states import PROD, STAGING, Slot

log = logging.getLogger(__name__)


class ServingView(Protocol):
    """What the report asks of the deployment: where a version serves, and a serving slot's metrics page."""

    def where(self, version: str) -> list[tuple[str, str, float]]:
        """(environment, slot, weight) of each slot running ``version``."""
        ...

    def metrics_page(self, environment: str, slot: str) -> str | None:
        """The slot's /metrics page, None when it does not answer."""
        ...


class TargetView:
    """A :class:`ServingView` of a deployment target: its recorded slots and weights, and its slots' metrics."""

    def __init__(self, target: DeploymentTarget) -> None:
        self.target = target

    def where(self, version: str) -> list[tuple[str, str, float]]:
        found = []
        for environment in (PROD, STAGING):
            weights = self.target.weights(environment)
            for slot in Slot:
                if self.target.slot_version(environment, slot) == version:
                    found.append((str(environment), str(slot), float(weights.get(slot, 0.0))))
        return found

    def metrics_page(self, environment: str, slot: str) -> str | None:
        try:
            return self.target.slot_metrics(environment, slot)
        except DeploymentError as exc:
            log.warning("report: %s/%s gave no metrics page: %s", environment, slot, exc)
            return None


def described(places: list[tuple[str, str, float]]) -> list[str]:
    """``production/stable: 95% of traffic`` for each place; a warm slot without traffic says so."""
    out = []
    for environment, slot, weight in sorted(places, key=lambda p: -p[2]):
        share = f"{weight:g}% of traffic" if weight > 0 else "warm, no traffic"
        out.append(f"{environment}/{slot}: {share}")
    return out


def busiest(places: list[tuple[str, str, float]]) -> tuple[str, str] | None:
    """The slot with the most traffic (its window of served rows is the drift worth showing)."""
    serving = [p for p in places if p[2] > 0]
    if not serving:
        return None
    environment, slot, _ = max(serving, key=lambda p: p[2])
    return environment, slot

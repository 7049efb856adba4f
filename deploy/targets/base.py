"""The deployment target interface: promotion logic drives any target (local, Kubernetes, compose) through it.

A target runs model versions in named *slots* of named *environments* (``staging``: one slot; ``production``:
``stable`` and ``canary`` behind a weighted router, plus a warm ``previous`` slot for rollbacks) and routes a share
of the environment's traffic to each slot. Promotion code never knows which kind of target it drives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class DeploymentError(RuntimeError):
    """A slot could not be started, checked, routed or stopped; the message says what to do next."""


@dataclass(frozen=True)
class ReplicaStatus:
    """One server process of a slot: where it listens, its pid, what its supervisor says, and its health."""

    port: int
    url: str
    pid: int | None
    state: str  # the supervisor's word: RUNNING, STARTING, BACKOFF (restarting), FATAL (gave up), ...
    healthy: bool
    detail: str = ""


@dataclass(frozen=True)
class SlotStatus:
    """One row of ``mlrelease status``: what serves where, at which weight, healthy or not."""

    environment: str
    slot: str
    version: str
    url: str
    pid: int | None
    weight: float
    healthy: bool
    detail: str = ""
    replicas: tuple[ReplicaStatus, ...] = ()
    expires_at: float | None = None  # a warm slot's end of window (unix time)


class SlotRecord(Protocol):
    """What promotion needs to know about a running slot, whatever the target."""

    @property
    def version(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def bundle_dir(self) -> str: ...
    @property
    def expires_at(self) -> float | None: ...


class DeploymentTarget(ABC):
    """Deploy a bundle into a slot, set traffic weights, report status, stop a slot."""

    name: str = "abstract"
    #: Called while the target waits for a server to become ready; it raises to stop the wait (a promotion whose
    #: lock an incident's rollback asked for). None: wait out the ready timeout.
    interrupt: Callable[[], None] | None = None

    @property
    def runs_image(self) -> bool:
        """Whether slots run each version's serving image by digest (a container runtime) rather than a process
        from the verified bundle; promotion then needs the image and gates on its scan."""
        return False

    @abstractmethod
    def deploy(self, environment: str, slot: str, bundle_dir: Path, version: str, image: str | None = None) -> str:
        """Start ``version`` from a verified bundle in ``slot`` and wait until it is ready; return its URL.

        ``image`` (``repository@sha256:…``) is the version's serving image, which a target that :attr:`runs_image`
        runs; it refuses a version without one. The slot gets no traffic until :meth:`set_weights` routes some to it.
        """

    @abstractmethod
    def set_weights(self, environment: str, weights: Mapping[str, float]) -> None:
        """Route the environment's traffic: slot name -> percent (summing to 100), without dropping requests."""

    @abstractmethod
    def rename(self, environment: str, source: str, dest: str, expires_at: float | None = None) -> None:
        """Relabel a running slot (e.g. canary -> stable) keeping its process and its share of traffic."""

    @abstractmethod
    def stop(self, environment: str, slot: str, wait: bool = True) -> None:
        """Drain and stop a slot that no longer receives traffic; stopping a missing slot is a no-op."""

    @abstractmethod
    def reconcile(self) -> list[str]:
        """Bring reality back to the recorded state (restart dead slots, expire warm ones); say what was done."""

    @abstractmethod
    def status(self) -> list[SlotStatus]:
        """Every slot of every environment with its version, weight and health."""

    @abstractmethod
    def slot_url(self, environment: str, slot: str) -> str | None:
        """The slot's own URL (metrics are scraped per slot), None when the slot is empty."""

    @abstractmethod
    def slot(self, environment: str, slot: str) -> SlotRecord | None:
        """The slot's record (version, url, model name, bundle), None when the slot is empty."""

    @abstractmethod
    def slot_problem(self, environment: str, slot: str) -> str | None:
        """None when the slot is ready and provably serves its recorded version and bundle; else what is wrong."""

    def starting(self, environment: str, slot: str) -> bool:
        """True while the slot's server runs but does not answer as itself yet (a restart under way): waiting for it
        is sooner than starting another. A target that cannot tell says False."""
        return False

    @abstractmethod
    def slot_version(self, environment: str, slot: str) -> str | None:
        """The version running in the slot, None when it is empty."""

    @abstractmethod
    def entry_url(self, environment: str) -> str | None:
        """Where the environment's clients send requests (the router for production)."""

    def tls_url(self, environment: str) -> str | None:
        """Where the environment's clients send requests over TLS, None when the target has no TLS listener."""
        return None

    @abstractmethod
    def weights(self, environment: str) -> dict[str, float]:
        """The current traffic split of the environment."""

    @abstractmethod
    def slot_metrics(self, environment: str, slot: str) -> str:
        """The slot's own Prometheus exposition text (the canary analysis compares slots on it).

        Raises :class:`DeploymentError` naming why when the slot gives no readable page (empty slot, no
        connection, an HTTP error): the analysis counts that as an inconclusive measurement, never as a pass.
        """

    @abstractmethod
    def hold_expiry(self, reason: str | None) -> None:
        """While ``reason`` is set, no warm slot expires (a rollback under way may be going to it); None lifts it.

        Expiry that comes due meanwhile happens once the hold is lifted.
        """

    @abstractmethod
    def stop_all(self) -> None:
        """Stop every slot and every router of every environment (``mlrelease down``)."""

    @abstractmethod
    def describe(self) -> str:
        """One line for ``mlrelease status``: which target, and where its state and logs are."""

"""The release commands as one object: a :class:`~release.context.Context` whose methods run the transitions.

The CLI builds one per command (``mlrelease.commands.release.build_promoter``); tests build one around a fake
target. Each method is a thin call into the module that owns the transition.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from release import canary, production, recovery, rollback, session, staging
from release.context import Context
from release.fast_rollback import FastSwitch
from release.journal import Operation
from release.outcome import Outcome
from release.states import Command


class Promoter(Context):
    """Runs the promotion commands against one target, registry and audit log."""

    def promote_staging(self, version: str | None, force: bool = False, reason: str | None = None) -> Outcome:
        """candidate -> staging, gated by the smoke test and the load test (``force`` is refused)."""
        return staging.promote_staging(self, version, force, reason)

    def promote_canary(
        self,
        steps: list[float] | None,
        interval: float | None,
        force: bool = False,
        reason: str | None = None,
        version: str | None = None,
    ) -> Outcome:
        """staging -> canary, under analysis at every step (``version`` given is refused: it takes staging's)."""
        return canary.promote_canary(self, steps, interval, force, reason, version)

    def promote_production(self, version: str | None, force: bool, reason: str | None) -> Outcome:
        """canary -> production, the replaced version kept warm for the rollback window."""
        return production.promote_production(self, version, force, reason)

    def rollback(self, to: str | None, reason: str | None, fast: FastSwitch | None = None) -> Outcome:
        """production -> previous (or ``to``), no analysis; ``fast``: what scripts/rollback.sh already did."""
        return rollback.rollback(self, to, reason, fast)

    def recover(self, out: Outcome, resume_rollback: bool = False) -> Operation | None:
        """Finish or undo a command that died; hand back an interrupted rollback when asked to resume it."""
        return recovery.recover(self, out, resume_rollback)

    @contextmanager
    def operation(self, command: Command, version: str, out: Outcome, **options: Any) -> Iterator[Operation | None]:
        """The lock, recovery, reconcile and journal around a command (see :func:`release.session.operation`)."""
        with session.operation(self, command, version, out, **options) as interrupted:
            yield interrupted

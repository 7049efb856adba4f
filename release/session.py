"""A release command's session: the promotion lock, recovery of a crashed predecessor, the reconcile of the
target, and the journal entry of this command, cleared when it ends."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from mlrelease.core.locking import promotion_lock
from release.context import Context
from release.journal import Operation, clear_stale_abort
from release.outcome import Outcome, PromotionError
from release.recovery import recover, unfinished_rollback
from release.states import UNJOURNALED, Command

log = logging.getLogger(__name__)


def settle(p: Context, command: Command, out: Outcome) -> None:
    """Before a promotion reads any precondition: the lock is free (PromotionLocked names the holder), no rollback
    is unfinished (exit 3), and a promotion that died is recovered now, so nothing unanalysed keeps traffic while
    a refusal waits for a human, and no advice is drawn from a half-done state ("has not passed canary" about a
    canary under way). A dry run changes nothing: it only looks for an unfinished rollback."""
    if p.dry_run:
        pending = p.journal.load().operation
        if pending is not None and pending.command == Command.ROLLBACK:
            raise unfinished_rollback(pending)
        return
    before = len(out.lines)
    with promotion_lock(p.state_dir, command, p.by):
        recover(p, out)
    for line in out.lines[before:]:  # live: a refusal that follows prints no summary
        log.warning("%s", line)


@contextmanager
def operation(
    p: Context,
    command: Command,
    version: str,
    out: Outcome,
    wait_s: float = 0.0,
    reconcile: bool = True,
    reason: str | None = None,
    from_version: str | None = None,
    forced: bool = False,
) -> Iterator[Operation | None]:
    """Hold the lock, recover a crashed predecessor, journal this operation, clear it when done.

    A rollback journals itself once it has decided under the lock; it is handed the rollback it is to
    finish (an interrupted one, or its own fast path's), else None. A reconcile is not journaled: it only
    brings the slots and routers back to the state, so an interrupted one leaves nothing to undo (its
    journal entry would have made the next command "recover" by taking the canary's traffic away).
    """
    with promotion_lock(p.state_dir, command, p.by, wait_s=wait_s):
        interrupted = recover(p, out, resume_rollback=command == Command.ROLLBACK)
        if command != Command.ROLLBACK:
            clear_stale_abort(p.state_dir, p.params.rollback_lock_wait)
            p.target.hold_expiry(None)  # no rollback is journaled (recover refuses otherwise): nothing to hold for
        with p.interruptible(command != Command.ROLLBACK):  # restarting a dead slot can take its ready timeout
            for line in p.target.reconcile() if reconcile else []:
                out.say(f"reconciled: {line}")
        if command not in UNJOURNALED:
            p.journal.set_operation(
                Operation(
                    command=command,
                    version=version,
                    pid=os.getpid(),
                    by=p.by,
                    reason=reason,
                    from_version=from_version,
                    forced=forced,
                )
            )
        try:
            yield interrupted
        except PromotionError:
            _finished(p, command)  # a handled failure: it already undid its own changes
            raise
        # any other error keeps the journal, so the next command's recover() puts traffic back on stable
        _finished(p, command)


def _finished(p: Context, command: Command) -> None:
    """Clear the journal; a rollback also lifts its hold on the warm slots' expiry."""
    p.journal.set_operation(None)
    if command == Command.ROLLBACK:
        p.target.hold_expiry(None)

"""The first second of an incident rollback: production traffic onto the warm previous version, before anything
slow (the registry client, the audit trail, typer, rich) is imported.

``scripts/rollback.sh`` runs :mod:`mlrelease.commands.fast_rollback`, which calls :func:`switch`. When
production's previous version is still warm, answers /ready as that very version and bundle, and no promotion
holds the lock, it journals the rollback and moves all traffic there under the promotion lock, returning what it
did (:class:`FastSwitch`); the full ``mlrelease rollback`` is handed that result, finds the traffic moved and does
the rest (slots, aliases, audit, verification). Otherwise it changes nothing and says why, so the full command's
rules (waiting for the lock, aborting a running canary, crash recovery, a cold ``--to``) apply.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.targets.base import DeploymentTarget
from release.journal import Journal, JournalState, Operation
from release.states import PROD, Command, Slot

STARTED_VAR = "MLRELEASE_COMMAND_STARTED"


@dataclass(frozen=True)
class FastSwitch:
    """What the fast path did: traffic moved from ``from_version`` to ``to_version``, and when."""

    from_version: str
    to_version: str
    seconds_since_command: float
    switch_s: float


def process_started() -> float:
    """Wall-clock start of the command: rollback.sh's own clock reading when it set one, else this process's start.

    The kernel gives a process's start relative to boot, and the boot time in whole seconds, so psutil's figure is
    off by up to a second (more as the clock drifts over the machine's uptime): "moved 1.2 s after the command
    started" could mean 0.4 s. A stamp from another command (an exported variable) is ignored.
    """
    import psutil

    kernel = float(psutil.Process().create_time())
    try:
        stamp = float(os.environ.get(STARTED_VAR, "").replace(",", "."))  # bash's EPOCHREALTIME follows the locale
    except ValueError:
        return kernel
    return stamp if abs(stamp - kernel) < 3.0 and stamp <= time.time() else kernel


def fast_goal(journal: JournalState, target: DeploymentTarget, to: str | None) -> tuple[str, str] | str:
    """(serving version, warm previous version) when the fast path applies; otherwise why it does not."""
    if journal.operation is not None:
        return f"an interrupted `{journal.operation.command}` must be recovered first"
    stable, previous = target.slot(PROD, Slot.STABLE), target.slot(PROD, Slot.PREVIOUS)
    if stable is None or previous is None:
        return "no warm previous production version"
    mark = journal.last_rollback
    if to is None and mark is not None and mark.to_version == stable.version:
        return f"already rolled back from version {mark.from_version} to {mark.to_version}"  # as the full command
    if to is not None and to != previous.version:
        return f"--to {to} is not the warm previous version ({previous.version})"
    if previous.version == stable.version:
        return f"the warm slot serves the current version {stable.version}"
    if previous.expires_at is not None and previous.expires_at < time.time():
        return f"the rollback window of version {previous.version} has expired"
    if target.weights(PROD).get(Slot.PREVIOUS, 0) >= 100:
        return "all traffic is already on the previous version"
    return stable.version, previous.version


def switch(
    state_dir: Path, target: DeploymentTarget, to: str | None, by: str, reason: str, started: float
) -> FastSwitch | str:
    """Under the promotion lock (never waiting for it), move production to the warm previous version.

    The rollback is journaled before traffic moves: until the full command has finished it, every other command
    refuses to run and a re-run of the rollback finishes it.
    """
    from deploy.targets.base import DeploymentError
    from mlrelease.core.locking import PromotionLocked, promotion_lock

    journal = Journal(state_dir)
    try:
        with promotion_lock(state_dir, "rollback (fast switch)", by):
            goal = fast_goal(journal.load(), target, to)
            if isinstance(goal, str):
                return goal
            t0 = time.monotonic()
            target.hold_expiry(f"a rollback to version {goal[1]} is journaled (scripts/rollback.sh finishes it)")
            journal.set_operation(
                Operation(
                    command=Command.ROLLBACK,
                    version=goal[1],
                    pid=os.getpid(),
                    by=by,
                    from_version=goal[0],
                    reason=reason,
                )
            )
            # checks the slot's identity first; if it fails, the full command finishes the journaled rollback cold
            target.set_weights(PROD, {Slot.PREVIOUS: 100})
            done = time.monotonic()
            return FastSwitch(goal[0], goal[1], round(time.time() - started, 3), round(done - t0, 4))
    except PromotionLocked:
        return "another promotion holds the lock (the full rollback asks it to stop)"
    except DeploymentError as exc:
        return f"the warm version cannot take traffic: {exc}"


def after_failure(switched: FastSwitch, state_dir: Path) -> str:
    """What the on-call reads under the full command's error: traffic did move, and whether a re-run is needed
    (only while the rollback is still journaled; one that finished but failed its check needs investigating)."""
    moved = (
        f"rollback: production traffic was moved to version {switched.to_version} "
        f"{switched.seconds_since_command:.2f} s after the command started"
    )
    try:
        pending = Journal(state_dir).load().operation
    except Exception:  # unreadable: say what is sure
        pending = None
    if pending is not None and pending.command == Command.ROLLBACK:
        return (
            f"{moved}; the steps after it failed as shown above. Fix that, then run scripts/rollback.sh again to "
            "finish (other commands wait for it; `mlrelease status` shows where traffic is now)."
        )
    return f"{moved}, and the rollback's steps are done; the error above came after them (`mlrelease status`)."

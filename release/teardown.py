"""``mlrelease down`` and the journal's one-line summary for ``status`` and ``history``."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

from deploy.targets.base import DeploymentTarget
from mlrelease.core.locking import promotion_lock
from mlrelease.core.proc import pid_alive
from release.audit import AuditLog, AuditRecord
from release.journal import Journal
from release.outcome import Outcome, PromotionError
from release.states import PROD, Command


def stop_everything(state_dir: Path, target: DeploymentTarget, yes: bool, actor: str) -> Outcome:
    """Under the promotion lock, stop every slot and router, clear any journaled promotion (nothing is left to
    recover) and record who did it. An unfinished rollback is refused: stopping it would leave the version it was
    taking production away from as the one to serve again."""
    out = Outcome()
    journal = Journal(state_dir)
    # nothing deployed, nothing to stop: no lock either, so a fresh workspace does not get a state folder
    with promotion_lock(state_dir, "down", actor) if state_dir.is_dir() else contextlib.nullcontext():
        running = target.status()
        if not running:
            out.say("nothing is running: no server or router to stop")
            return out
        op = journal.load().operation
        if op is not None and op.command == Command.ROLLBACK:
            raise PromotionError(
                f"a rollback from version {op.from_version} to {op.version} is unfinished; "
                "finish it with scripts/rollback.sh first",
                exit_code=2,
            )
        serving = [r for r in running if r.environment == PROD and r.weight > 0]
        if serving and not yes:
            raise PromotionError(
                f"production serves version {serving[0].version} through {target.entry_url(PROD)}; "
                "`mlrelease down --yes` stops it all the same",
                exit_code=2,
            )
        target.stop_all()
        journal.set_operation(None)
    stopped = [f"{r.environment}/{r.slot} (version {r.version})" for r in running]
    AuditLog(state_dir).append(
        AuditRecord("down", "all", actor, outcome="stopped", reason="mlrelease down: " + ", ".join(stopped))
    )
    back = f"; `mlrelease promote production --version {serving[0].version}` serves it again" if serving else ""
    out.say("stopped " + ", ".join(stopped) + " and their routers" + back)
    return out


def in_progress(state_dir: Path) -> str | None:
    """The journaled operation in a line, None when there is none. An operation's audit record is written when it
    ends, so a rollback under way (or interrupted) shows here, with what finishes it, and nowhere else."""
    op = Journal(state_dir).load().operation
    if op is None:
        return None
    since = datetime.fromtimestamp(op.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    moving = f" from version {op.from_version}" if op.from_version else ""
    if pid_alive(op.pid):
        where = f"running (pid {op.pid})"
    elif op.command == Command.ROLLBACK:
        where = f"interrupted (pid {op.pid} is gone): run scripts/rollback.sh to finish it"
    else:
        where = (
            f"interrupted (pid {op.pid} is gone): the next command recovers it (undone, or finished if its switch "
            "was done): `mlrelease reconcile`, or scripts/rollback.sh in an incident"
        )
    reason = f" ({'forced: ' if op.forced else ''}{op.reason})" if op.reason else ""
    return f"in progress: `{op.command}` to version {op.version}{moving} by {op.by} since {since} UTC{reason}, {where}"

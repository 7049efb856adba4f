"""Transition ``production -> previous``: the incident rollback. No analysis: all production traffic back on the
previous (or given) version, idempotent and resumable after a crash, verified afterwards. A promotion that holds
the lock is asked to abort; a promotion that died is recovered first; the switch itself is
:mod:`release.rollback_switch`'s."""

from __future__ import annotations

import os
import time

from mlrelease.core.locking import PromotionLocked, promotion_lock
from mlrelease.core.proc import pid_alive
from registry.client import brief_requests, is_registry_error
from release.audit import AuditRecord
from release.bookkeeping import note_canary_stopped, note_found_done, note_rollback, previous_version
from release.canary import drop_canary
from release.context import Context
from release.fast_rollback import FastSwitch
from release.journal import ABORT_FILE, AbortRequest, Operation, RollbackMark
from release.outcome import Outcome, PromotionError
from release.production import verify_production
from release.recovery import recover
from release.rollback_switch import switch_back
from release.session import operation
from release.states import PASSED_TAG, PROD, ROLLED_BACK_TAG, WARM_SLOTS, Command, Slot

DEFAULT_REASON = "incident rollback"


def rollback(p: Context, to: str | None, reason: str | None, fast: FastSwitch | None = None) -> Outcome:
    """Incident path: no analysis; all production traffic back on the previous (or given) version. Registry
    calls give up within seconds: traffic moves whether or not the registry answers. ``fast``: what this
    command's fast path (scripts/rollback.sh) already did."""
    with brief_requests():
        return run_rollback(p, to, reason or DEFAULT_REASON, fast)


def run_rollback(p: Context, to: str | None, reason: str, fast: FastSwitch | None = None) -> Outcome:
    """Move production back without analysis; idempotent, resumable after a crash; verifies afterwards. Every run
    leaves its reason in the audit log: on the rollback it did or finished, or on its own record when another run
    had done it or held the lock too long."""
    out = Outcome()
    if p.dry_run:
        return preview_rollback(p, to, out)
    abort = AbortRequest(p.state_dir / ABORT_FILE)
    try:
        return _rollback(p, to, reason, out, abort, fast)
    except PromotionLocked as exc:
        abort.made = False  # the request stays: the promotion holding the lock stops at its next check
        _note_gave_up(p, reason, exc)
        raise
    finally:
        abort.withdraw()


def _note_gave_up(p: Context, reason: str, exc: PromotionLocked) -> None:
    """The audit record of a run that gave up waiting for the lock (exit 3): its reason is kept, with the holder."""
    p.note(AuditRecord("rollback", PROD, p.by, reason=reason, outcome="gave up waiting", evidence={"lock": str(exc)}))


def preview_rollback(p: Context, to: str | None, out: Outcome) -> Outcome:
    """What ``run_rollback`` would do, changing nothing."""
    dead = _dead_promotion(p)
    if dead is not None and _preview_recovery(p, dead, to, out):
        return out
    canary = None if dead is not None else active_canary(p)  # recovery stops a dead promotion's canary
    plan = rollback_plan(p, to, out, p.journal.load().operation, canary)
    if plan is None and canary is None:
        return verify_production(p, str(p.target.slot_version(PROD, Slot.STABLE)), out)
    out.say(
        f"would move all production traffic from version {plan[0]} to {plan[1]}, canary weight 0"
        if plan is not None
        else f"would stop the canary of version {canary}; production stays on its stable version"
    )
    return out


def _rollback(
    p: Context, to: str | None, reason: str, out: Outcome, abort: AbortRequest, fast: FastSwitch | None
) -> Outcome:
    """The rollback itself, its abort request made: recover a dead promotion, plan, then switch under the lock."""
    restored = _recover_dead_promotion(p, to, reason, out, abort)
    if restored is not None and to in (None, restored):
        out.say("undoing the interrupted promotion put production back on its previous version: nothing more to do")
        return verify_production(p, restored, out)
    canary = active_canary(p)
    plan = rollback_plan(p, to, out, p.journal.load().operation, canary)
    if plan is None and canary is None:
        _lift_orphaned_hold(p)
        return _nothing_to_do(p, reason, out, fast)
    goal = plan[1] if plan is not None else str(canary)
    abort.make()
    with operation(p, Command.ROLLBACK, goal, out, wait_s=p.params.rollback_lock_wait, reconcile=False) as pending:
        abort.withdraw()
        said = Outcome()
        decided = rollback_plan(p, to, said, pending, canary, locked=True)  # decide again under the lock
        out.lines += [line for line in said.lines if line not in out.lines]  # what changed while it waited
        if decided is None and canary is None:
            return _nothing_to_do(p, reason, out, fast)
        if decided is None:
            _clear_canary(p, canary, reason, out)
            return verify_production(p, str(p.target.slot_version(PROD, Slot.STABLE)), out)
        if decided != plan and pending is None:
            raise PromotionError(
                "production changed while this rollback waited for the lock (it planned "
                f"{' -> '.join(plan) if plan else 'to stop the canary'}, now it would move "
                f"{decided[0]} -> {decided[1]}); "
                "nothing was changed. Check `mlrelease status`, then run scripts/rollback.sh "
                "again, or with --to VERSION",
                exit_code=2,
            )
        resumed = pending if pending is not None and pending.pid != os.getpid() else None
        if resumed is not None:  # another run's rollback: its reason first, this run's joined to it
            reason = joined_reason(resumed.reason, reason, p.by)
        p.target.hold_expiry(f"a rollback to version {decided[1]} is journaled (scripts/rollback.sh finishes it)")
        p.journal.set_operation(
            Operation(
                command=Command.ROLLBACK,
                version=decided[1],
                pid=os.getpid(),
                by=resumed.by if resumed is not None else p.by,  # who started it, however many runs finish it
                started_at=resumed.started_at if resumed is not None else time.time(),
                from_version=decided[0],
                reason=reason,
            )
        )
        return switch_back(p, decided[0], decided[1], reason, out, resumed, fast)


def active_canary(p: Context) -> str | None:
    """The version of a canary that holds production traffic or is running (or was killed mid-way); else None."""
    op = p.journal.load().operation
    running = op is not None and op.command == Command.PROMOTE_CANARY
    if p.target.weights(PROD).get(Slot.CANARY, 0) > 0 or running:
        return p.target.slot_version(PROD, Slot.CANARY) or (op.version if running and op is not None else None)
    return None


def rollback_goal(p: Context, to: str | None, out: Outcome, canary: str | None = None) -> tuple[str | None, str | None]:
    """(version serving now, version to go back to); goal None means production needs no move, and says why.

    With a canary running there is always something to do (stop it), so "no previous version" is no error then.
    """
    warm = {p.target.slot_version(PROD, slot) for slot in WARM_SLOTS}
    if to is not None and to not in warm:  # a warm version needs no registry (which may be the incident)
        p.require_registered(to)
    state = p.journal.load()
    current = p.target.slot(PROD, Slot.STABLE)
    if current is None:
        raise PromotionError(
            "production serves nothing, so there is nothing to roll back. Next: "
            "`mlrelease status`; deploy with `mlrelease promote production`",
            exit_code=2,
        )
    mark = state.last_rollback
    done = "nothing to do" if canary is None else f"production needs no move, only the canary of version {canary}"
    if to is None and mark is not None and mark.to_version == current.version:
        out.say(f"already rolled back from version {mark.from_version} to {mark.to_version}{mark.said()}; {done}")
        return current.version, None
    goal = to or previous_version(state, current.version, p.target.slot_version(PROD, Slot.PREVIOUS))
    if goal is None and canary is not None:
        out.say(f"no previous production version to go back to; production stays on version {current.version}")
        return current.version, None
    if goal is None:
        raise PromotionError("no previous production version is known; pass --to VERSION", exit_code=2)
    if goal == current.version:
        rolled = mark is not None and mark.to_version == goal
        back = f": rolled back from version {mark.from_version}{mark.said()}" if mark is not None and rolled else ""
        out.say(f"production already serves version {goal}{back}; {done}")
        return current.version, None
    return current.version, goal


def rollback_plan(
    p: Context,
    to: str | None,
    out: Outcome,
    interrupted: Operation | None,
    canary: str | None = None,
    locked: bool = False,
) -> tuple[str, str] | None:
    """(version to leave, version to go back to), None when there is nothing to do.

    A journaled rollback (interrupted, another run's under way, or this command's own fast path) is finished
    toward its own goal, whatever intermediate state it left behind. ``locked``: planned under the lock.
    """
    if interrupted is not None and interrupted.command == Command.ROLLBACK and interrupted.from_version:
        alive = interrupted.pid != os.getpid() and pid_alive(interrupted.pid)
        if to is not None and to != interrupted.version:
            raise PromotionError(
                f"a rollback to version {interrupted.version} is {'under way' if alive else 'unfinished'}; run "
                f"`scripts/rollback.sh` without --to to finish it first, then --to {to}",
                exit_code=2,
            )
        if interrupted.pid != os.getpid():
            out.say(_journaled_rollback(interrupted, alive, locked, p.dry_run))
        return interrupted.from_version, interrupted.version
    current, goal = rollback_goal(p, to, out, canary)
    return None if goal is None else (str(current), goal)


def _journaled_rollback(op: Operation, alive: bool, locked: bool, dry_run: bool) -> str:
    """What this run says of another run's journaled rollback: interrupted (its process is gone), under way (it
    runs; this run waits for the lock), or journaled by a process that runs but has not taken the lock back (its
    fast path done, its full command not yet started): this run finishes it then."""
    moves = f"rollback from version {op.from_version} to {op.version}"
    if not alive:
        return f"finishing the interrupted {moves} (pid {op.pid}, by {op.by})"
    who = f"pid {op.pid}, by {op.by}, reason: {op.reason or DEFAULT_REASON}"
    if locked:
        return f"finishing the {moves} that another run journaled ({who}; it is still running)"
    return f"another {moves} is under way ({who})" + ("" if dry_run else ": waiting for it")


def joined_reason(started: str | None, mine: str, by: str) -> str:
    """The reason on the record of a rollback this run finishes for another: the starter's, then this run's own,
    so that no on-call's reason is dropped (unless it is the same, already joined, or the default one)."""
    if not started:
        return mine
    own = f"also from {by}: {mine}"
    if mine in (started, DEFAULT_REASON) or own in started.split("; "):
        return started
    return f"{started}; {own}"


def _lift_orphaned_hold(p: Context) -> None:
    """A rollback killed after clearing its journal but before lifting its hold on the warm slots' expiry left the
    hold with nothing journaled: lift it, under the lock. A taken lock is left alone: its holder lifts the hold as
    it starts (any command but a rollback), or when it ends (a rollback)."""
    try:
        with promotion_lock(p.state_dir, Command.ROLLBACK, p.by):
            if p.journal.load().operation is None:
                p.target.hold_expiry(None)
    except PromotionLocked:
        return


def _nothing_to_do(p: Context, reason: str, out: Outcome, fast: FastSwitch | None) -> Outcome:
    """Production needs no move: a rollback (another run's, maybe while this one waited) already put it where it
    was asked to be. Recorded with this run's reason as "already-done", unless the rollback that did it is this
    command's own (its fast path journaled it, another run finished it: its reason is on that record) or no
    reason was given (a plain re-run changes nothing and has nothing to keep: one record per change)."""
    serving = str(p.target.slot_version(PROD, Slot.STABLE))
    mark = p.journal.load().last_rollback
    done = mark if mark is not None and mark.to_version == serving else None
    own = (
        fast is not None
        and done is not None
        and done.pid == os.getpid()
        and (done.from_version, done.to_version) == (fast.from_version, fast.to_version)
    )
    if own and done is not None:
        out.say(
            f"this command's rollback from version {done.from_version} to {done.to_version} (its fast path moved the "
            f"traffic) was finished by {done.finished_by or 'another run'} meanwhile; nothing left to do"
        )
    elif reason != DEFAULT_REASON:
        note_found_done(p, serving, done, reason)
    return verify_production(p, serving, out)


def _serving_version(p: Context) -> str | None:
    """The version holding most of production's traffic (stable's when no weights are written): the one an incident
    is about. A `promote production` killed after its switch serves the new version from the canary slot while the
    stable slot still holds the old one, so the stable slot alone does not say what was serving."""
    weights = p.target.weights(PROD)
    slot = max(weights, key=lambda name: weights[name]) if weights else Slot.STABLE
    return p.target.slot_version(PROD, slot)


def _dead_promotion(p: Context) -> Operation | None:
    """The journaled promotion whose process is gone (killed mid-way), else None."""
    op = p.journal.load().operation
    return None if op is None or op.command == Command.ROLLBACK or pid_alive(op.pid) else op


def _recover_dead_promotion(p: Context, to: str | None, reason: str, out: Outcome, abort: AbortRequest) -> str | None:
    """A promotion killed mid-way is undone under the lock before the rollback plans: its half-done state (no
    stable slot, say) is no base for a plan. When undoing it took traffic off the version that served, that version
    is withdrawn under the same lock. Returns the version production is back on then, else None. Another command may
    recover it while this one waits: a rollback run has then withdrawn the version too (this one finds it rolled
    back), any other command has not, and this one withdraws it."""
    op = _dead_promotion(p)
    if op is None:
        return None
    before = _serving_version(p)  # read again under the lock when nobody recovered it meanwhile
    abort.make()  # another command may have recovered it and hold the lock now
    with promotion_lock(p.state_dir, Command.ROLLBACK, p.by, wait_s=p.params.rollback_lock_wait):
        abort.withdraw()
        state = p.journal.load()
        if state.operation == op:
            before = _serving_version(p)
            recover(p, out, resume_rollback=True)  # traffic back on stable (or the switch finished), journal cleared
        elif state.operation is not None or _withdrawn_since(state.last_rollback, before, op):
            return None  # a rollback is journaled (the main path finishes it), or one already withdrew the version
        after = _serving_version(p)
        if before is None or after is None or after == before or to == before:
            return None
        _withdraw_undone(p, before, after, reason, out)
    return after


def _withdrawn_since(mark: RollbackMark | None, version: str | None, op: Operation) -> bool:
    """A rollback withdrew ``version`` after ``op`` started (so, from the very promotion ``op`` journaled)."""
    return mark is not None and mark.from_version == version and mark.at >= op.started_at


def _preview_recovery(p: Context, op: Operation, to: str | None, out: Outcome) -> bool:
    """A dry run with a dead promotion journaled: say what recovering it first would do. True when the real run
    stops there (the preview is complete); False when production stays on the version serving now, so the plan
    from the current state holds."""
    out.say(f"would first recover the interrupted `{op.command}` of version {op.version} (pid {op.pid} is gone)")
    serving = _serving_version(p)
    back_on = p.target.slot_version(PROD, Slot.STABLE) or p.target.slot_version(PROD, Slot.PREVIOUS)
    if serving is None or back_on is None or serving == back_on:
        return False
    withdrawn = "" if to == serving else f" and withdraw version {serving} as rolled back"
    out.say(f"undoing it would put production back on version {back_on}{withdrawn}")
    out.say(
        "nothing more to do after that"
        if to in (None, back_on)
        else f"then would move all production traffic from version {back_on} to {to}"
    )
    return True


def _clear_canary(p: Context, version: str | None, reason: str, out: Outcome) -> None:
    """Production needs no move, but a canary ran: by now it stopped itself (it saw the abort request) or recovery
    undid a dead one; make sure no traffic, process or alias is left, and record who stopped it and why."""
    if version is None:
        return
    drop_canary(p, version, out)
    stable = note_canary_stopped(p, version, reason)
    out.say(f"canary of version {version} stopped: all production traffic on version {stable}")


def _withdraw_undone(p: Context, version: str, stable: str, reason: str, out: Outcome) -> None:
    """The version an incident's rollback found serving from an interrupted promotion, undone by recovery: tagged
    rolled back, its canary pass and alias withdrawn, as for any version a rollback moves production away from
    (else the next `promote production` would put it back), the rollback marked (a second run then says "already
    rolled back" instead of moving on to an older version) and recorded with the on-call's reason."""
    state = p.journal.load()
    state.last_rollback = RollbackMark(
        from_version=version, to_version=stable, at=time.time(), by=p.by, reason=reason, pid=os.getpid()
    )
    p.journal.save(state)
    outcome = "done"
    try:
        p.registry.delete_alias("canary", only=version)
        p.registry.set_tag(version, ROLLED_BACK_TAG, reason[:500])
        p.registry.set_tag(version, PASSED_TAG["canary"], "false")
        out.say(f"version {version} tagged rolled_back, its canary pass withdrawn")
    except Exception as exc:
        if not is_registry_error(exc):
            raise
        p.registry_silent = True  # the record below is not to wait for it again for the image digest
        out.exit_code = 1
        outcome = "registry not updated"
        out.say(
            f"NOT DONE: the registry did not answer ({exc}), so version {version} keeps its canary pass and is not "
            "tagged rolled back: do not `mlrelease promote production` it; canary it again once the registry answers"
        )
    undid = {"undid": "an interrupted `promote production` that served it"}
    note_rollback(p, version, stable, reason, outcome=outcome, evidence=undid)

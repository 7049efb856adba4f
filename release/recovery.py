"""Crash recovery: a command that died (kill -9, a reboot) left its journal; the next command puts all traffic on
a healthy version and finishes or undoes the rest before it does anything else.

An interrupted rollback is not undone: it is returned for the rollback command to finish, and every other command
is refused until it is finished (an incident is in progress).
"""

from __future__ import annotations

from registry.client import is_registry_error
from release.audit import AuditRecord
from release.bookkeeping import drop_canary_alias_of, finish_production, stale_pass
from release.context import Context
from release.journal import Operation
from release.outcome import Outcome, PromotionError
from release.states import NEW_SLOT_OF, PASSED_TAG, PROD, STAGING, Command, Slot


def recover(p: Context, out: Outcome, resume_rollback: bool = False) -> Operation | None:
    """A promotion that died (kill -9) left its journal: put all traffic on stable and undo the rest.

    An interrupted rollback is not undone: it is returned for the rollback command to finish, and any other
    command is refused until it is finished (an incident is in progress).
    """
    op = p.journal.load().operation
    if op is None:
        return None
    if op.command == Command.ROLLBACK:
        if resume_rollback:
            return op
        raise unfinished_rollback(op)
    if op.command == Command.RECONCILE:  # journaled by an earlier mlrelease: it has nothing to undo
        p.journal.set_operation(None)
        return None
    out.say(f"recovering from an interrupted `{op.command}` of version {op.version} (pid {op.pid})")
    if op.command == Command.PROMOTE_PRODUCTION and p.target.slot_version(PROD, Slot.STABLE) == op.version:
        _finish_interrupted_production(p, op, out, tolerate_registry=resume_rollback)
        p.journal.set_operation(None)  # the switch was done: finished, not reported undone
        return None
    if op.command == Command.PROMOTE_STAGING and _staging_switched(p, op):
        _finish_interrupted_staging(p, op, out)  # its gates passed and its slot is stable: finish it
        p.journal.set_operation(None)
        return None
    _production_back_on_stable(p, out)
    if op.command == Command.PROMOTE_STAGING:
        _staging_back_on_stable(p, out)
    # only the interrupted command's own new slot: a passed canary kept warm at weight 0 waits for
    # `promote production`, and an interrupted `promote staging` must not take it away
    if op.command in NEW_SLOT_OF:
        env, slot = NEW_SLOT_OF[op.command]
        if p.target.slot_version(env, slot) is not None and p.target.weights(env).get(slot, 0) == 0:
            p.target.stop(env, slot)
            out.say(f"stopped {env}/{slot}")
    if op.command == Command.PROMOTE_CANARY:
        drop_canary_alias_of(p, op.version, out)
    p.note(
        AuditRecord(
            "recover",
            PROD,
            p.by,
            to_version=op.version,
            outcome="undone",
            reason=f"interrupted `{op.command}` by {op.by} (pid {op.pid})" + _its_reason(op),
        )
    )
    p.journal.set_operation(None)
    return None


def _its_reason(op: Operation) -> str:
    """The undone command's own reason (and --force) for the recover record: no reason given is dropped."""
    if not op.reason:
        return ""
    return f"; its reason{' (forced)' if op.forced else ''}: {op.reason}"


def _production_back_on_stable(p: Context, out: Outcome) -> None:
    """All production traffic on the stable slot (the previous one if a switch died between its renames),
    restarting that slot first if its process died with the command (a reboot, an OOM kill)."""
    if p.target.slot_version(PROD, Slot.STABLE) is None and p.target.slot_version(PROD, Slot.PREVIOUS):
        # `promote production` died between its two renames: the old stable is `previous`; put it back
        p.route_all(PROD, Slot.PREVIOUS, out)
        p.target.rename(PROD, Slot.PREVIOUS, Slot.STABLE)
        out.say("traffic: 100% back on the previous production version, which is stable again")
    weights = p.target.weights(PROD)
    if weights and weights.get(Slot.STABLE, 0) < 100 and p.target.slot_version(PROD, Slot.STABLE) is not None:
        p.route_all(PROD, Slot.STABLE, out)
        out.say("traffic: 100% back on stable")


def _staging_back_on_stable(p: Context, out: Outcome) -> None:
    """Staging's record back on its stable slot; with none yet, the new slot (its gates had passed) becomes
    stable, so that the next `promote staging` can deploy again (it refuses to replace a slot with weight)."""
    if p.target.weights(STAGING).get(Slot.PENDING, 0) == 0:
        return
    if p.target.slot_version(STAGING, Slot.STABLE) is None:
        p.target.rename(STAGING, Slot.PENDING, Slot.STABLE)
        out.say("staging: the new version's slot is now stable (its alias was not set: promote it again)")
        return
    p.route_all(STAGING, Slot.STABLE, out)
    out.say("staging: back on its stable slot")


def _finish_interrupted_production(p: Context, op: Operation, out: Outcome, tolerate_registry: bool = False) -> None:
    """`promote production` died after its switch: all traffic on the new stable, then its alias, history
    and audit record, as the command would have written them. ``tolerate_registry``: for a rollback, which
    moves production away from it next, a registry that does not answer leaves that bookkeeping undone
    (said) instead of stopping the rollback before it moves any traffic."""
    p.route_all(PROD, Slot.STABLE, out)  # a no-op when the switch already routed everything there
    try:
        tags = p.registry.tags(op.version)
        # the version it replaced, as journaled (the warm previous slot may have expired since)
        previous = op.from_version or p.target.slot_version(PROD, Slot.PREVIOUS)
        # as the command judged it: a pass measured against another stable than the one replaced was forced
        passed = tags.get(PASSED_TAG["canary"]) == "true" and stale_pass(tags, previous) is None
        reason = f"finished by recovery: `promote production` by {op.by} (pid {op.pid}) died after its switch"
        why = f"{reason}; its reason: {op.reason}" if op.reason else reason
        finish_production(p, op.version, previous, passed, why, forced=op.forced)
    except Exception as exc:
        if not (tolerate_registry and is_registry_error(exc)):
            raise
        out.say(
            f"production: version {op.version} serves 100% of traffic, switched by a `promote production` that "
            f"died; its alias could not be set (the registry did not answer: {exc}); the rollback goes on"
        )
        return
    out.say(f"production: version {op.version} serves 100% of traffic; its alias and history are now set")


def _staging_switched(p: Context, op: Operation) -> bool:
    """`promote staging` died after its gates passed and its new slot became stable (renamed: no pending slot
    left): staging serves the new version, so it is finished, whether it died before its alias, between the alias
    and its tag, or after both (reporting it undone would leave the alias on a version nothing serves)."""
    return p.target.slot_version(STAGING, Slot.STABLE) == op.version and p.target.slot(STAGING, Slot.PENDING) is None


def _finish_interrupted_staging(p: Context, op: Operation, out: Outcome) -> None:
    """The alias, tag and audit record the interrupted `promote staging` would have written; a registry that
    does not answer leaves the alias (said, with what to run), never an "undone" record for a done switch."""
    reason = f"finished by recovery: `promote staging` by {op.by} (pid {op.pid}) died after its gates and switch"
    reason += _its_reason(op)
    try:
        p.registry.set_alias(STAGING, op.version)
        p.registry.set_tag(op.version, PASSED_TAG["staging"], "true")
    except Exception as exc:
        if not is_registry_error(exc):
            raise
        p.note(AuditRecord("promote", STAGING, p.by, to_version=op.version, reason=reason, outcome="alias not set"))
        out.say(
            f"staging: version {op.version} serves staging (its gates had passed), but its alias could not be "
            f"set (the registry did not answer: {exc}); once it answers: `mlrelease promote staging --version "
            f"{op.version}`"
        )
        return
    if not _promotion_recorded(p, op):  # it died after its own record: the record stands, once
        p.note(
            AuditRecord(
                "promote",
                STAGING,
                p.by,
                to_version=op.version,
                alias=STAGING,
                reason=reason,
                outcome="forced" if op.forced else "done",
                image_digest=p.image_digest(op.version),
            )
        )
    out.say(f"staging: version {op.version} serves staging (its gates had passed); alias staging -> {op.version}")


def _promotion_recorded(p: Context, op: Operation) -> bool:
    """The interrupted command wrote its own `promote` record before it died (after its alias and tag)."""
    return any(
        r.get("action") == "promote"
        and r.get("environment") == op.command.split()[-1]
        and r.get("to_version") == op.version
        and r.get("outcome") in ("done", "forced")
        and float(r.get("at", 0)) >= op.started_at
        for r in p.audit.records()
    )


def unfinished_rollback(op: Operation) -> PromotionError:
    """Exit 3 for any command but a rollback while a rollback is journaled: an incident is in progress."""
    return PromotionError(
        f"a rollback to version {op.version} by {op.by} (pid {op.pid}) is running or was "
        "interrupted; run `scripts/rollback.sh` to finish it, then retry",
        exit_code=3,
    )

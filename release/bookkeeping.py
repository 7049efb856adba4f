"""Bookkeeping that transitions and recovery share: production's history and alias, canary aliases and passes,
and the audit records of rollbacks and stopped canaries."""

from __future__ import annotations

from typing import Any

from registry.client import is_registry_error
from registry.image import IMAGE_DIGEST_TAG
from release.audit import AuditRecord
from release.context import Context
from release.journal import JournalState, RollbackMark
from release.outcome import Outcome
from release.states import CANARY_REPORT_TAG, PASSED_AGAINST_TAG, PASSED_TAG, PROD, Slot


def finish_production(
    p: Context, version: str, previous: str | None, passed: bool, reason: str | None, forced: bool = False
) -> None:
    """Production's history, alias and audit record once ``version`` serves all of its traffic (also when
    recovery finishes a `promote production` that died after its switch). Recorded as forced when run with
    --force or without a canary pass; the evidence says whether the pass held."""
    state = p.journal.load()
    state.record_production(version)  # once, even when recovery finishes an interrupted run
    state.last_rollback = None
    p.journal.save(state)
    p.registry.set_alias(PROD, version)
    p.registry.delete_alias("canary")
    tags = p.registry.tags(version)
    p.note(
        AuditRecord(
            "promote",
            PROD,
            p.by,
            to_version=version,
            from_version=previous,
            alias=PROD,
            weights={Slot.STABLE: 100},
            reason=reason or "passed canary",
            outcome="forced" if forced or not passed else "done",
            evidence={"canary_report": tags.get(CANARY_REPORT_TAG), "canary_passed": passed},
            image_digest=tags.get(IMAGE_DIGEST_TAG),
        )
    )


def drop_canary_alias_of(p: Context, version: str, out: Outcome) -> None:
    """The canary alias of an undone `promote canary`, if it names that version. A registry that does not
    answer leaves it (said, not raised): recovery must not stop an incident's rollback over bookkeeping."""
    try:
        p.registry.delete_alias("canary", only=version)
    except Exception as exc:
        if not is_registry_error(exc):
            raise
        out.say(f"the canary alias could not be checked (the registry did not answer: {exc}); it may name {version}")


def stale_pass(tags: dict[str, str], serving: str | None) -> str | None:
    """What a canary pass was measured against when production has changed since (a rollback, a forced release):
    a pass compares the version with one stable version and says nothing about another. None when it still holds
    (or predates the tag)."""
    against = tags.get(PASSED_AGAINST_TAG)
    if tags.get(PASSED_TAG["canary"]) != "true" or against is None or serving is None or against == serving:
        return None
    return f"version {against}, but production now serves version {serving}"


def previous_version(state: JournalState, current: str, warm: str | None) -> str | None:
    """The version to roll back to: the warm previous slot's, else the last other production version."""
    if warm is not None and warm != current:
        return warm
    skip = {current} | ({state.last_rollback.from_version} if state.last_rollback else set())
    return next((v for v in reversed(state.production_history) if v not in skip), None)


def note_canary_rollback(
    p: Context, version: str, stable: str, reason: str, evidence: dict[str, Any] | None = None
) -> None:
    """The audit record of a canary stopped, all traffic on stable."""
    p.note(
        AuditRecord(
            "canary-rollback",
            PROD,
            p.by,
            to_version=stable,
            from_version=version,
            alias="canary",
            weights={Slot.STABLE: 100},
            outcome="rolled back",
            reason=reason,
            evidence=evidence or {},
            image_digest=p.image_digest(stable),
        )
    )


def note_canary_stopped(p: Context, version: str, reason: str) -> str | None:
    """The audit record of a canary stopped by a rollback: all production traffic on stable, and why; returns the
    stable version it names."""
    stable = p.target.slot_version(PROD, Slot.STABLE)
    note_rollback(p, version, stable, reason, alias="canary", outcome="canary stopped")
    return stable


def note_rollback(p: Context, away: str, to: str | None, reason: str, by: str | None = None, **fields: Any) -> None:
    """The audit record of production moved off ``away`` to ``to`` by a rollback, all traffic on stable (``by``:
    who started it, when not this run)."""
    record = AuditRecord(
        "rollback",
        PROD,
        by or p.by,
        to_version=to,
        from_version=away,
        weights={Slot.STABLE: 100},
        reason=reason,
        image_digest=p.image_digest(to),  # after traffic moved: the slow part of a rollback
        **fields,
    )
    p.note(record)


def note_found_done(p: Context, serving: str, done: RollbackMark | None, reason: str) -> None:
    """The audit record of a rollback run that changed nothing: production already served where it was asked to
    be (``done``: the rollback that put it there, when one did). Its reason is kept, as every run's is."""
    evidence: dict[str, Any] = {}
    if done is not None:
        evidence = {"done_by": done.by, "done_at": round(done.at, 3), "done_pid": done.pid, "done_reason": done.reason}
    p.note(
        AuditRecord(
            "rollback",
            PROD,
            p.by,
            to_version=serving,
            from_version=done.from_version if done is not None else None,
            reason=reason,
            outcome="already-done",
            evidence={k: v for k, v in evidence.items() if v is not None},
        )
    )

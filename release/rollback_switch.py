"""The rollback's switch: all production traffic onto the goal version (warm when a slot still runs it, else
started cold in the canary's slot), the slots relabelled, the journal, registry and audit brought up to date.
Every step checks the state first, so a re-run after a crash at any point finishes the same rollback."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from deploy.targets.base import DeploymentError
from mlrelease.core.http import wait_until
from registry.client import is_not_found, is_registry_error
from release.bookkeeping import note_canary_stopped, note_rollback
from release.context import Context, wait_identity
from release.fast_rollback import FastSwitch, process_started
from release.journal import Operation, RollbackMark
from release.outcome import Outcome, PromotionError, RegistryBehind
from release.production import verify_production
from release.states import PASSED_TAG, PROD, ROLLED_BACK_TAG, WARM_SLOTS, Slot

log = logging.getLogger(__name__)


def route_to(p: Context, goal: str, out: Outcome) -> tuple[bool, str]:
    """All production traffic on ``goal``; returns (it was warm, the slot that serves it now)."""
    weights = p.target.weights(PROD)
    where = next((s for s in WARM_SLOTS if p.target.slot_version(PROD, s) == goal), None)
    ready = where is not None and wait_identity(p.target, PROD, where, 1.0)
    if where is not None and not ready and p.target.starting(PROD, where):  # a restart under way (an interrupted
        slot = where  # reconcile): sooner than a cold start
        wait_until(lambda: not p.target.starting(PROD, slot), p.params.ready_timeout)
        ready = wait_identity(p.target, PROD, where, 1.0)
    if where is not None and not ready and weights.get(where, 0) > 0:
        p.revive(PROD, where, out, then="run scripts/rollback.sh again")  # it holds traffic: never replaced
        ready = True
    if where is not None and ready:
        # always: a run killed between writing the weights and nginx's reload left the state ahead of the router
        # (the router's applied-config stamp makes this a no-op when nginx already routes so)
        p.target.set_weights(PROD, {where: 100})
        return True, where
    spare = where if where in (Slot.PREVIOUS, Slot.CANARY) else Slot.CANARY  # goal's own dead slot, else the canary's
    _cold_start(p, goal, spare, out)
    p.target.set_weights(PROD, {spare: 100})
    return False, spare


def _cold_start(p: Context, goal: str, slot: str, out: Outcome) -> None:
    """Start ``goal`` in ``slot`` (the canary's, which the rollback stops anyway), so that a warm previous version
    stays warm whether ``goal`` starts or not; PromotionError, nothing moved, when it cannot start."""
    if p.target.weights(PROD).get(slot, 0) > 0:
        raise DeploymentError(
            f"{PROD}/{slot} (version {p.target.slot_version(PROD, slot)}) holds traffic, so version {goal} "
            "cannot be started in its place; run scripts/rollback.sh without --to first"
        )
    out.say(f"version {goal} is not warm: starting it (slower than the warm path)")
    try:
        bundle = p.bundle(goal)  # fetched and verified before anything is stopped
        image = p.image_to_run(goal)
    except Exception as exc:  # a PromotionError ends the rollback unjournaled: nothing moved, nothing to finish
        if not (is_registry_error(exc) or type(exc).__module__.startswith("requests")):  # requests: artifact proxy
            raise
        serving = p.target.slot_version(PROD, Slot.STABLE)
        if is_not_found(exc):
            raise PromotionError(
                f"version {goal} is not warm and not in the registry ({exc}), so no traffic moved: production stays on "
                f"version {serving}. Next: scripts/rollback.sh --to a registered version",
                exit_code=2,
            ) from exc
        raise PromotionError(
            f"version {goal} is not warm and its bundle could not be fetched from the registry ({exc}), so no "
            f"traffic moved: production stays on version {serving}. Next: run "
            "scripts/rollback.sh again once the registry answers, or --to a version that is warm "
            "(`mlrelease status`)"
        ) from exc
    replaced = p.target.slot_version(PROD, slot) if slot == Slot.CANARY else None
    p.target.stop(PROD, slot)
    try:
        p.target.deploy(PROD, slot, bundle, goal, image=image)
    except DeploymentError as exc:  # no traffic moved: end this rollback (a PromotionError clears its journal)
        stopped = replaced if replaced is not None and replaced != goal else None
        forgot = stopped is not None and _forget_stopped_canary(p, stopped, goal)
        raise PromotionError(_cold_start_failed(p, goal, exc, stopped, forgot)) from exc


def _forget_stopped_canary(p: Context, version: str, goal: str) -> bool:
    """The canary stopped for a cold start that failed: its alias goes too (no alias names a canary that nothing
    serves, as after a rollback that succeeds), and the audit log says why it stopped. False if that failed."""
    try:
        p.registry.delete_alias("canary")
        note_canary_stopped(p, version, f"its slot was taken to start version {goal} for a rollback, which failed")
    except Exception:  # never in place of the error the on-call engineer needs to read
        log.exception("removing the alias of the stopped canary (version %s) failed", version)
        return False
    return True


def _cold_start_failed(p: Context, goal: str, exc: DeploymentError, stopped: str | None, alias_removed: bool) -> str:
    """What an on-call engineer reads when the version to roll back to cannot start: nothing moved, and what next
    (``stopped``: the waiting canary's version, stopped to make room)."""
    serving = p.target.slot_version(PROD, Slot.STABLE)
    warm = p.target.slot_version(PROD, Slot.PREVIOUS)
    if warm is not None and warm not in (serving, goal) and wait_identity(p.target, PROD, Slot.PREVIOUS, 1.0):
        then = f"version {warm} is still warm: run scripts/rollback.sh --to {warm} to move to it in about a second"
    else:
        then = f"run scripts/rollback.sh again to retry version {goal}"
    canary = ""
    if stopped is not None:
        alias = "and its alias removed" if alias_removed else "but its alias could not be removed (see the log)"
        canary = f" The canary of version {stopped}, waiting at weight 0, was stopped to make room for it, {alias}."
    return (
        f"version {goal} could not be started, so no traffic moved: production stays on version {serving}. "
        f"{exc}.{canary} Next: {then}, or with --to another version"
    )


def switch_back(
    p: Context,
    bad: str,
    goal: str,
    reason: str,
    out: Outcome,
    resumed: Operation | None = None,
    fast: FastSwitch | None = None,
) -> Outcome:
    """Every step checks the state first, so a re-run after a crash at any point finishes the same rollback.
    ``resumed``: the journal of an earlier run that started it (its actor and time go on the audit record);
    ``fast``: this command's fast path, when it already moved traffic (its timings are the ones reported)."""
    started = time.monotonic()
    was_warm, slot = route_to(p, goal, out)
    switch_s = time.monotonic() - started
    since_command = time.time() - process_started()
    fast = fast if fast is not None and fast.to_version == goal else None
    if fast is not None:
        switch_s, since_command = fast.switch_s, fast.seconds_since_command
    how = "fast path, " if fast is not None else ""
    out.say(
        f"traffic: 100% on version {goal}, {since_command:.2f} s after the command started "
        f"({how}{'warm' if was_warm else 'cold'} switch {switch_s:.3f} s); canary weight 0"
    )
    if slot != Slot.CANARY:
        p.target.stop(PROD, Slot.CANARY, wait=False)
    if slot != Slot.STABLE:
        p.target.stop(PROD, Slot.STABLE, wait=False)
        p.target.rename(PROD, slot, Slot.STABLE)  # from the canary's slot, a warm previous version stays warm
    state = p.journal.load()
    state.last_rollback = RollbackMark(
        from_version=bad,
        to_version=goal,
        at=time.time(),
        by=resumed.by if resumed is not None else p.by,
        reason=reason,
        pid=resumed.pid if resumed is not None else os.getpid(),
        finished_by=p.by if resumed is not None else None,
    )
    state.record_production(goal)
    p.journal.save(state)
    verify_production(p, goal, out)
    try:
        p.registry.set_alias(PROD, goal)
        canary_alias = p.registry.delete_alias("canary")
        p.registry.set_tag(bad, ROLLED_BACK_TAG, reason[:500])
        p.registry.set_tag(bad, PASSED_TAG["canary"], "false")  # back to production only through a new canary
    except Exception as exc:
        if not is_registry_error(exc):
            raise
        checked = "verified" if out.exit_code == 0 else "but NOT verified (see above)"
        raise RegistryBehind(
            "\n".join(
                [
                    *out.lines,
                    f"production traffic is on version {goal}, {checked}; the registry could not be updated "
                    f"({exc}), so the production alias, the rolled_back tag on version {bad} and the history entry "
                    "are still to do. Run scripts/rollback.sh again once the registry answers: it finishes only "
                    "these steps (other commands wait for it)",
                ]
            )
        ) from exc
    note_rollback(
        p,
        bad,
        goal,
        reason,
        by=resumed.by if resumed is not None else None,  # the traffic moved on their command
        alias=PROD,
        evidence=_rollback_evidence(p, resumed, switch_s, was_warm, fast is not None, since_command),
        at=resumed.started_at if resumed is not None else time.time(),
    )
    removed = f"; alias canary (version {canary_alias}) removed" if canary_alias is not None else ""
    out.say(f"alias production -> {goal}{removed}; version {bad} stopped and tagged rolled_back")
    return out


def _rollback_evidence(
    p: Context, resumed: Operation | None, switch_s: float, warm: bool, fast: bool, since_command: float
) -> dict[str, Any]:
    """The rollback record's evidence; a rollback finished by a later run says so and by whom (its timings are
    that run's, not those of the run that started it)."""
    evidence: dict[str, Any] = {
        "switch_seconds": round(switch_s, 4),
        "warm": warm,
        "fast_path": fast,
        "seconds_since_command": round(since_command, 3),
    }
    if resumed is not None:
        evidence.update(finished_by=p.by, finished_at=round(time.time(), 3), previous_run_pid=resumed.pid)
    return evidence

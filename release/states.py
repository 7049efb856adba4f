"""The release state machine's vocabulary: commands (transitions), environments, slots and registry tags.

A transition moves a version one step: ``candidate -> staging`` (promote staging), ``staging -> canary``
(promote canary), ``canary -> production`` (promote production), and ``production -> previous`` (rollback).
Each journaled command starts its new version in one slot; recovery stops that slot (only it) once it has no
traffic. The values are the strings written to the journal, the audit log and the lock's holder note.
"""

from __future__ import annotations

from enum import StrEnum


class Command(StrEnum):
    """A release command: a transition of the state machine (reconcile only re-applies the recorded state)."""

    PROMOTE_STAGING = "promote staging"
    PROMOTE_CANARY = "promote canary"
    PROMOTE_PRODUCTION = "promote production"
    ROLLBACK = "rollback"
    RECONCILE = "reconcile"


class Env(StrEnum):
    """The environments a target runs: staging (one slot) and production (behind a weighted router)."""

    STAGING = "staging"
    PRODUCTION = "production"


class Slot(StrEnum):
    """Slot names: ``stable`` serves, ``canary`` is under analysis, ``previous`` is kept warm for a rollback,
    ``pending`` is staging's new version while its gates run."""

    STABLE = "stable"
    CANARY = "canary"
    PREVIOUS = "previous"
    PENDING = "pending"


PROD, STAGING = Env.PRODUCTION, Env.STAGING
#: commands that journal nothing: a rollback journals itself once it has decided under the lock; a reconcile
#: only re-applies the state, so an interrupted one leaves nothing to undo
UNJOURNALED = frozenset({Command.ROLLBACK, Command.RECONCILE})
#: the slot each journaled command starts its new version in: recovery stops it (only it) once it has no traffic
NEW_SLOT_OF = {
    Command.PROMOTE_STAGING: (Env.STAGING, Slot.PENDING),
    Command.PROMOTE_CANARY: (Env.PRODUCTION, Slot.CANARY),
    Command.PROMOTE_PRODUCTION: (Env.PRODUCTION, Slot.CANARY),
}
#: production slots in the order a rollback looks for a warm version
WARM_SLOTS = (Slot.STABLE, Slot.PREVIOUS, Slot.CANARY)

PASSED_TAG = {"staging": "mlrelease.staging_passed", "canary": "mlrelease.canary_passed"}
PASSED_AGAINST_TAG = "mlrelease.canary_passed_against"  # the stable version the canary was compared with
ROLLED_BACK_TAG = "mlrelease.rolled_back"  # set on the version a rollback moved production away from
CANARY_REPORT_TAG = "mlrelease.canary_report"

"""Transition ``canary -> production``: the version that passed canary becomes production's stable slot; the
version it replaces stays warm for the rollback window. Also the check that production answers as a version."""

from __future__ import annotations

import time
from pathlib import Path

from release.bookkeeping import finish_production, stale_pass
from release.context import Context, wait_identity
from release.outcome import Outcome, PromotionError, given_reason
from release.session import operation, settle
from release.states import PASSED_TAG, PROD, ROLLED_BACK_TAG, STAGING, Command, Slot


def promote_production(p: Context, version: str | None, force: bool, reason: str | None) -> Outcome:
    """Switch the stable slot to a version that passed canary; keep the previous one warm for rollbacks.

    Every ``--force`` is recorded as forced with its reason, also when the canary pass it may skip holds."""
    out = Outcome()
    settle(p, Command.PROMOTE_PRODUCTION, out)  # before any refusal: a dead canary never waits for a human
    reason = given_reason(force, reason, "say why the canary is skipped")
    serving = p.registry.alias(PROD)
    waiting = version is not None or p.registry.alias("canary") is not None
    staged = p.registry.alias(STAGING)  # a staged version that has not passed canary is work left to do
    settled = serving is not None and staged in (None, serving)
    if not waiting and settled and p.target.slot_version(PROD, Slot.STABLE) == serving:
        out.say(f"production already serves version {serving} and no canary waits; nothing to do")
        return out
    version = p.require_version(
        version,
        "canary",
        "run `mlrelease promote canary` first, or name the version with --version "
        "(a first release: --version V --force --reason TEXT)",
    )
    if serving == version and p.target.slot_version(PROD, Slot.STABLE) == version:
        out.say(f"production already serves version {version}; nothing to do")
        return out
    tags = p.registry.tags(version)
    serving_now = p.target.slot_version(PROD, Slot.STABLE)
    stale = None if serving_now == version else stale_pass(tags, serving_now)
    passed = tags.get(PASSED_TAG["canary"]) == "true" and stale is None  # a forced skip is audited as forced
    if stale and not force:
        raise PromotionError(
            f"version {version} passed its canary against {stale}: run `mlrelease promote canary` again "
            "(it needs the staging alias), or pass --force --reason TEXT",
            exit_code=2,
        )
    if not passed and not force:
        rolled_back = tags.get(ROLLED_BACK_TAG)
        again = (
            f"it was rolled back from production ({rolled_back}) and its canary pass withdrawn: stage it, then "
            "`mlrelease promote canary --force --reason TEXT`"
            if rolled_back is not None
            else "run `mlrelease promote canary`"
        )
        raise PromotionError(
            f"version {version} has not passed canary; {again}, or pass --force --reason TEXT", exit_code=2
        )
    if force:
        _say_forced(out, version, stale, passed, reason, p.dry_run)
    if p.dry_run:
        previous = p.target.slot_version(PROD, Slot.STABLE)
        kept = f"version {previous} kept warm {p.params.rollback_window:g} s" if previous else "a first release"
        out.say(f"would switch production stable to version {version} ({kept})")
        return out
    # journaled with its reason, --force and the version it replaces: recovery audits it as this command would
    replaces = None if serving_now == version else serving_now  # same version: recovery only finishes it
    with operation(p, Command.PROMOTE_PRODUCTION, version, out, reason=reason, from_version=replaces, forced=force):
        _switch_production(p, version, passed, reason, out, force)
    return out


def _say_forced(out: Outcome, version: str, stale: str | None, passed: bool, reason: str | None, dry: bool) -> None:
    """What a ``--force`` overrides (maybe nothing), and that it is recorded as forced with its reason."""
    if passed:
        what = f"version {version} needs no override (its canary pass holds)"
    else:
        what = f"its stale canary pass (against {stale}) is overridden" if stale else "the canary is skipped"
    out.say(f"--force: {what}; {'would be ' if dry else ''}recorded as forced: {reason}")


def _switch_production(
    p: Context, version: str, passed: bool, reason: str | None, out: Outcome, forced: bool = False
) -> None:
    """The warm canary becomes stable, the replaced version stays warm, then the alias, history and audit record
    (``forced``: run with --force, recorded so)."""
    previous = p.target.slot_version(PROD, Slot.STABLE)
    if previous == version and p.registry.alias(PROD) == version:  # recovery just finished this very release
        out.say(f"production already serves version {version}; nothing more to do")
        return
    if previous != version:
        if p.target.slot_version(PROD, Slot.CANARY) != version:
            p.deploy_new(PROD, Slot.CANARY, p.bundle(version), version)
        if previous is None:
            p.target.rename(PROD, Slot.CANARY, Slot.STABLE)
            p.target.set_weights(PROD, {Slot.STABLE: 100})
        else:
            p.target.set_weights(PROD, {Slot.CANARY: 100})
            p.target.rename(PROD, Slot.STABLE, Slot.PREVIOUS, expires_at=time.time() + p.params.rollback_window)
            p.target.rename(PROD, Slot.CANARY, Slot.STABLE)
    finish_production(p, version, previous, passed, reason, forced)
    out.say(f"production: version {version} takes 100% of traffic on {p.target.entry_url(PROD)}")
    if previous and previous != version:
        out.say(
            f"previous version {previous} kept warm for {p.params.rollback_window:g} s "
            "(scripts/rollback.sh switches back to it)"
        )


def verify_production(p: Context, version: str, out: Outcome) -> Outcome:
    """/ready of the stable slot and one prediction through the router, answered by ``version``."""
    import httpx

    from deploy.targets.traffic import predict_path, sample_rows

    slot, entry = p.target.slot(PROD, Slot.STABLE), p.target.entry_url(PROD)
    if slot is None or entry is None or not wait_identity(p.target, PROD, Slot.STABLE, 5.0):
        out.exit_code = 1
        out.say(
            f"NOT OK: version {version} is not ready. Next: check {p.state_dir / 'logs'}, then "
            "`scripts/rollback.sh --to VERSION` to another version, or `mlrelease status`"
        )
        return out
    row = sample_rows(Path(slot.bundle_dir), 1, seed=3)
    try:
        resp = httpx.post(
            entry + predict_path(slot.model_name),
            json={"instances": row},
            headers=p.settings.prediction_headers(),
            timeout=5,
        )
        answered = str(resp.json().get("model_version")) if resp.status_code == 200 else f"HTTP {resp.status_code}"
    except (httpx.HTTPError, ValueError) as exc:
        answered = f"error {exc}"
    if answered != str(version):
        out.exit_code = 1
        out.say(
            f"NOT OK: a prediction through {entry} was answered by {answered}, expected version {version}. "
            f"Next: `mlrelease status`, nginx log {p.state_dir / 'nginx' / PROD / 'error.log'}"
        )
        return out
    out.say(f"verified: {slot.url}/ready is 200 and a prediction through {entry} is answered by version {version}")
    return out

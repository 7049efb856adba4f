"""Transition ``staging -> canary``: start the staging version in production's canary slot and shift traffic to
it step by step, measuring both slots through the target every interval; the judgement is
:mod:`release.analysis`'s. A failed or inconclusive analysis drops the canary at once (weight 0, slot stopped)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from deploy.targets.base import DeploymentError
from mlrelease.core.params import CanaryParams
from mlrelease.core.progress import progress
from release.analysis import Analysis, Measurement, measure
from release.audit import AuditRecord
from release.bookkeeping import note_canary_rollback, stale_pass
from release.context import Context
from release.metrics_provider import MetricsProvider, between, make_provider
from release.metrics_provider import interval_delta as interval_delta  # re-exported: tests use both
from release.metrics_provider import scrape as scrape
from release.outcome import Outcome, PromotionError, given_reason
from release.session import operation, settle
from release.states import (
    PASSED_AGAINST_TAG,
    PASSED_TAG,
    PROD,
    ROLLED_BACK_TAG,
    STAGING,
    Command,
    Slot,
)

if TYPE_CHECKING:
    from deploy.targets.traffic import LoadResult

log = logging.getLogger(__name__)


def promote_canary(
    p: Context,
    steps: list[float] | None,
    interval: float | None,
    force: bool = False,
    reason: str | None = None,
    version: str | None = None,
) -> Outcome:
    """Start the canary slot with the staging version and shift traffic step by step under analysis.

    A version once rolled back from production is refused unless ``force`` with a reason: its aliases may
    still point at it, and an incident's culprit should not take traffic again by default. Every ``--force`` is
    recorded as forced with its reason. ``version``: a version named on the command line, refused (the canary
    takes staging's) after recovery, as every refusal."""
    out = Outcome()
    settle(p, Command.PROMOTE_CANARY, out)
    if version is not None:
        raise PromotionError(
            f"canary always takes the version on staging (now {p.registry.alias(STAGING) or 'none'}); to canary "
            f"version {version}: `mlrelease promote staging --version {version}`, then `mlrelease promote canary`",
            exit_code=2,
        )
    reason = given_reason(force, reason, "say why this canary is forced")
    updates = {k: v for k, v in {"steps": steps, "interval": interval}.items() if v}
    try:  # validate, so --steps cannot give the canary the majority of traffic
        params = CanaryParams.model_validate({**p.canary_params.model_dump(), **updates})
    except ValidationError as exc:
        raise PromotionError(f"invalid canary settings {updates}: {exc.errors()[0]['msg']}", exit_code=2) from exc
    version = p.require_version(None, STAGING, "promote a version to staging first")
    stable = p.target.slot_version(PROD, Slot.STABLE)
    if stable is None:
        raise PromotionError(
            "production has no stable version to compare a canary with; the first release "
            "goes `mlrelease promote production --version V --force --reason 'first release'`",
            exit_code=2,
        )
    if stable == version:
        out.say(f"version {version} already serves production; nothing to do{p.unstaged_candidate(version)}")
        return out
    tags = p.registry.tags(version)
    fresh = tags.get(PASSED_TAG["canary"]) == "true" and not stale_pass(tags, stable)
    if fresh and p.registry.alias("canary") == version:
        out.say(f"version {version} already passed canary; next: `mlrelease promote production`")
        return out
    _check_override(version, tags, force, reason, out, p.dry_run)
    if p.dry_run:
        out.say(
            f"would canary version {version} against stable {stable} at steps {params.steps}% "
            f"every {params.interval:g} s"
        )
        return out
    with operation(p, Command.PROMOTE_CANARY, version, out, reason=reason, forced=force):
        _run_canary(p, version, stable, params, out, reason, force)
    return out


def _check_override(
    version: str, tags: dict[str, str], force: bool, reason: str | None, out: Outcome, dry: bool = False
) -> None:
    """Refuse a version once rolled back unless forced; say what a ``--force`` overrides (it is recorded as
    forced either way)."""
    rolled_back = tags.get(ROLLED_BACK_TAG)
    if rolled_back is not None and not force:
        raise PromotionError(
            f"version {version} was rolled back from production ({rolled_back}); register a fixed "
            "version and promote it to staging, or canary this one again with --force --reason TEXT",
            exit_code=2,
        )
    if rolled_back is not None:
        out.say(f"version {version} was rolled back before ({rolled_back}); canaried again: {reason}")
    elif force:
        recorded = "would be recorded" if dry else "recorded"
        out.say(f"--force: version {version} needs no override; {recorded} as forced all the same: {reason}")


def _with_reason(base: str, reason: str | None, forced: bool, sep: str = "; ") -> str:
    """A record's reason: ``base``, then the operator's reason, marked forced when run with --force."""
    return base if reason is None else f"{base}{sep}{'forced' if forced else 'reason'}: {reason}"


def _run_canary(
    p: Context,
    version: str,
    stable: str,
    params: CanaryParams,
    out: Outcome,
    reason: str | None = None,
    forced: bool = False,
) -> None:
    """Deploy, alias, analyse, then keep the passed canary warm at weight 0 (or drop it). ``reason``: the
    operator's, on its records; ``forced``: run with --force, its records say "forced"."""
    bundle = p.bundle(version)
    try:
        p.deploy_new(PROD, Slot.CANARY, bundle, version)
    except PromotionError as exc:  # a rollback took over before the canary got any traffic: say who stopped it
        note_canary_rollback(p, version, stable, f"{exc} (its server was still starting; it took no traffic)")
        raise
    p.registry.set_alias("canary", version)
    p.note(
        AuditRecord(
            "alias",
            PROD,
            p.by,
            to_version=version,
            from_version=stable,
            alias="canary",
            reason=_with_reason("canary started", reason, forced, sep=", "),
            outcome="forced" if forced else "done",
            image_digest=p.image_digest(version),
        )
    )
    try:
        analysis = run_analysis(p, version, stable, params, out)
    except PromotionError as exc:
        abort_canary(p, version, stable, str(exc), {}, out)
        raise
    except Exception as exc:  # a crashed analysis, a canary that died, a failed reload: never keep its traffic
        abort_canary(p, version, stable, f"analysis error: {exc}", {}, out)
        raise PromotionError(
            f"canary of version {version} rolled back after an error: {exc}; production stays on version {stable}"
        ) from exc
    evidence = {"report": str(analysis["report"]), "measurements": analysis["measurements"]}
    if analysis["aborted"]:
        abort_canary(p, version, stable, analysis["aborted"], evidence, out)
        raise PromotionError(
            f"canary of version {version} rolled back: {analysis['aborted']} "
            f"(report {analysis['report']}); production stays on version {stable}"
        )
    p.target.set_weights(PROD, {Slot.STABLE: 100})
    p.registry.set_tag(version, PASSED_TAG["canary"], "true")
    p.registry.set_tag(version, PASSED_AGAINST_TAG, str(stable))
    p.registry.set_tag(version, "mlrelease.canary_report", str(analysis["report"]))
    p.note(
        AuditRecord(
            "canary-passed",
            PROD,
            p.by,
            to_version=version,
            from_version=stable,
            alias="canary",
            weights={Slot.STABLE: 100},
            evidence=evidence,
            reason=_with_reason("analysis passed at every step; canary kept warm at weight 0", reason, forced),
            outcome="forced" if forced else "done",
            image_digest=p.image_digest(version),
        )
    )
    out.say(f"canary of version {version} passed (report {analysis['report']}); next: `mlrelease promote production`")


def drop_canary(p: Context, version: str, out: Outcome | None = None) -> None:
    """Weight 0, canary slot stopped, alias removed, canary pass withdrawn (each a no-op when already so).

    Stable is restarted first if it died: nginx then sends its share to the canary as the backup, so a
    canary dropped without it would keep all of production's traffic."""
    p.route_all(PROD, Slot.STABLE, out or Outcome())
    p.target.stop(PROD, Slot.CANARY)
    p.registry.delete_alias("canary")
    p.registry.set_tag(version, PASSED_TAG["canary"], "false")


def abort_canary(
    p: Context, version: str, stable: str, reason: str, evidence: dict[str, Any], out: Outcome | None = None
) -> None:
    """The canary dropped, the reason recorded."""
    try:
        drop_canary(p, version, out)
    except DeploymentError as exc:  # stable cannot take the traffic back: say why the canary was stopped too
        raise DeploymentError(f"canary of version {version} failed ({reason}) and could not be dropped: {exc}") from exc
    note_canary_rollback(p, version, stable, reason, evidence)


def measure_interval(
    p: Context, weight: float, params: CanaryParams, rows: list[list[float]], provider: MetricsProvider | None = None
) -> Measurement:
    """Read both slots' counters (``canary.metrics_provider``), let one interval of traffic pass (driving load if
    asked), read them again, judge."""
    from deploy.targets.traffic import LoadDriver

    target = p.target
    provider = provider or make_provider(params, target)
    entry, stable = target.entry_url(PROD), target.slot(PROD, Slot.STABLE)
    if target.slot(PROD, Slot.CANARY) is None or entry is None or stable is None:
        raise RuntimeError("canary analysis needs running stable and canary slots and a router")
    slots = (Slot.CANARY, Slot.STABLE)
    before = provider.read(slots)
    driver = None
    if params.drive_load:
        driver = LoadDriver(
            entry,
            stable.model_name,
            rows,
            params.load_rps,
            params.load_concurrency,
            max_seconds=params.interval + 5,
            headers=p.settings.prediction_headers(),
        )
        driver.start()
    load: LoadResult | None = None
    try:
        p.sleep(params.interval)
    finally:
        if driver is not None:
            load = driver.stop()
    after = provider.read(slots)
    canary, stable_counts = (between(before[slot], after[slot]) for slot in slots)
    return measure(canary, stable_counts, weight, params, load)


def client_rows(p: Context, stable: str) -> list[list[float]]:
    """Rows shaped like today's clients' requests: drawn from the stable version's (verified) bundle.

    A canary with a changed input contract must meet the requests production gets now, not its own: rows drawn
    from the canary's bundle would make stable look broken. No stable bundle, no analysis (never the canary's).
    """
    from deploy.targets.traffic import sample_rows

    return sample_rows(p.bundle(stable), 256, seed=7)


def run_analysis(p: Context, version: str, stable: str, params: CanaryParams, out: Outcome) -> dict[str, Any]:
    """Shift traffic step by step; measure every interval; stop at the first verdict beyond the limits. Progress:
    a bar over the steps on a terminal, and a line per interval with each check's value (a log line elsewhere)."""
    rows = client_rows(p, stable)
    analysis = Analysis(params)
    aborted: str | None = None
    with progress("canary analysis", total=len(params.steps), unit="steps", log=log) as bar:
        for done, weight in enumerate(params.steps):
            weights: dict[str, float] = {Slot.STABLE: 100 - weight, Slot.CANARY: weight}
            p.stop_if_aborted()  # a rollback asked during the last measurement: no bigger share first
            p.target.set_weights(PROD, weights)
            p.note(
                AuditRecord(
                    "traffic",
                    PROD,
                    p.by,
                    to_version=version,
                    from_version=stable,
                    weights=weights,
                    reason=f"canary step {weight:g}%",
                    image_digest=p.image_digest(version),
                )
            )
            p.stop_if_aborted()  # a rollback asked while the canary was still deploying or between steps
            log.info("canary step %g%%: version %s takes %g%% of production traffic", weight, version, weight)
            while aborted is None:
                m = measure_interval(p, weight, params, rows)
                analysis.add(m)
                said = f"step {weight:g}%: {m.verdict} ({'; '.join(m.reasons) or _summary(m)})"
                bar.note(said)  # live progress: the summary only prints when the canary ends
                out.say(said)
                aborted = analysis.aborted()
                steps_done = done + 1 if m.verdict == "passed" else done
                bar.update(steps_done, weight=weight, intervals=len(analysis.measurements))
                if m.verdict == "passed":
                    break
            if aborted:
                break
    report = p.write_report(
        f"canary_v{version}.json",
        {
            "version": version,
            "stable": stable,
            "params": params.model_dump(),
            "aborted": aborted,
            "measurements": [m.as_dict() for m in analysis.measurements],
        },
    )
    return {"aborted": aborted, "report": report, "measurements": [m.as_dict() for m in analysis.measurements]}


def _summary(m: Measurement) -> str:
    """One interval's figures for the progress line."""

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    total = m.canary_requests + m.stable_requests
    share = m.canary_requests / total if total > 0 else None
    return (
        f"canary {m.canary_requests:g} req, errors {fmt(m.canary_error_rate, '.2%')}, "
        f"4xx {fmt(m.canary_client_error_rate, '.2%')} vs {fmt(m.stable_client_error_rate, '.2%')}, "
        f"p99 {fmt(m.canary_p99_ms, '.1f')} ms vs {fmt(m.stable_p99_ms, '.1f')} ms, "
        f"traffic share {fmt(share, '.1%')} at weight {m.weight:g}%, divergence {fmt(m.divergence, '.3f')}"
        + ("" if m.driver_requests is None else f", driven load {m.driver_requests} req, {m.driver_failed} failed")
    )

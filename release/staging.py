"""Transition ``candidate -> staging``: check the version's scanned image (when required), deploy to staging's
pending slot, run the smoke test and the Locust load-test gate, then make it staging's stable slot and move the
``staging`` alias."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mlrelease.core.http import probe
from mlrelease.core.modelcard import ModelCard
from registry.image import IMAGE_DIGEST_TAG
from release.audit import AuditRecord
from release.context import Context, wait_identity
from release.image_gate import SETTING, check_image, gate_on, image_evidence
from release.outcome import Outcome, PromotionError, given_reason
from release.session import operation, settle
from release.states import PASSED_TAG, STAGING, Command, Slot


def promote_staging(p: Context, version: str | None, force: bool = False, reason: str | None = None) -> Outcome:
    """Deploy to staging, run the smoke test and the load-test gate, then move the ``staging`` alias.

    With ``promotion.require_scanned_image`` on, the version's image must have passed `mlrelease scan` first;
    ``--force --reason`` overrides that gate only, recorded as forced. The smoke test and load gate are never
    skipped: with the image gate off, a ``--force`` is refused (after recovery, as every refusal) rather than
    ignored. A ``--reason`` is recorded on its audit record."""
    out = Outcome()
    settle(p, Command.PROMOTE_STAGING, out)
    if force and not gate_on(p):
        raise PromotionError(
            "promote staging has no --force: its smoke test and load gate are never skipped, and the image gate it "
            f"would override is off ({SETTING}). Fix what fails, or register a fixed version",
            exit_code=2,
        )
    reason = given_reason(force, reason, "say why the image gate is overridden")
    version = p.require_version(version, "candidate", "register one first (`mlrelease run`)")
    if (
        p.registry.alias(STAGING) == version
        and p.target.slot_version(STAGING, Slot.STABLE) == version
        and wait_identity(p.target, STAGING, Slot.STABLE, 1.0)
    ):
        out.say(f"staging already serves version {version} and has the alias; nothing to do")
        return out
    tags = p.version_tags(version)
    gate = check_image(p, version, tags, force, reason, out)  # before a dry run too: it says what would happen
    if p.dry_run:
        out.say(f"would deploy version {version} to staging, run smoke + load gates, set alias staging")
        return out
    with operation(p, Command.PROMOTE_STAGING, version, out, reason=reason, forced=force):
        p.stop_if_aborted()  # a rollback waiting for the lock goes first: staging can wait, an incident not
        bundle = p.bundle(version)
        digest = tags.get(IMAGE_DIGEST_TAG)
        url = p.deploy_new(STAGING, Slot.PENDING, bundle, version)
        evidence = _staging_gates(p, version, url, bundle, digest)
        evidence["image"] = image_evidence(tags, gate)
        previous = p.target.slot_version(STAGING, Slot.STABLE)
        p.target.set_weights(STAGING, {Slot.PENDING: 100})  # staging has no router: this only records it
        p.target.rename(STAGING, Slot.PENDING, Slot.STABLE)  # the old staging slot is stopped
        p.registry.set_alias(STAGING, version)
        p.registry.set_tag(version, PASSED_TAG["staging"], "true")
        said = f"; {'forced' if force else 'reason'}: {reason}" if reason else ""
        p.note(
            AuditRecord(
                "promote",
                STAGING,
                p.by,
                to_version=version,
                from_version=previous,
                alias=STAGING,
                evidence=evidence,
                reason="smoke and load gates passed" + said,
                outcome="forced" if force else "done",
                image_digest=digest,
            )
        )
        out.say(f"staging: version {version} on {url}; alias staging -> {version}")
    return out


def _staging_gates(p: Context, version: str, url: str, bundle: Path, digest: str | None) -> dict[str, Any]:
    """Smoke test then load gate; on failure stop the new slot, record why, keep staging as it was."""
    try:
        p.stop_if_aborted()
        evidence: dict[str, Any] = {
            "smoke": smoke_test(url, bundle, p.params.smoke_rows, p.settings.prediction_headers())
        }
        if p.params.load_gate:
            evidence["loadtest"] = load_gate(p, url, version, bundle)
        return evidence
    except Exception as exc:  # a failed gate, or a timeout/connection error while checking it
        p.target.stop(STAGING, Slot.PENDING)
        p.note(
            AuditRecord(
                "promote",
                STAGING,
                p.by,
                to_version=version,
                alias=STAGING,
                outcome="failed",
                reason=str(exc),
                image_digest=digest,
            )
        )
        raise PromotionError(f"staging gate failed for version {version}: {exc}; staging unchanged") from exc


def load_gate(p: Context, url: str, version: str, bundle: Path) -> dict[str, Any]:
    """The serving engineer's Locust gate (deploy/loadtest) against the staging slot, SLOs from params.yaml.

    Payloads are the home's test split when it fits the version, else rows sampled from the version's
    reference statistics: a deployment host need not have run the pipeline."""
    from deploy.loadtest.runner import LoadtestError, LoadtestParams, run_loadtest, write_gate_rows

    out = p.reports_dir / f"loadtest_staging_v{version}.json"
    test_csv = p.settings.home / "data" / "prepared" / "test.csv"
    with tempfile.TemporaryDirectory(prefix="mlrelease-gate-") as tmp:
        rows_csv = Path(tmp) / "rows.csv"
        payload = write_gate_rows(bundle, test_csv, p.target_column, p.params.load_gate_rows, rows_csv)
        try:
            params = p.loadtest or LoadtestParams.model_validate({})
            report = run_loadtest(
                url,
                params,
                rows_csv,
                p.target_column,
                out,
                out.with_suffix(".html"),
                p.settings.prediction_headers(),
                stop=p.stop_if_aborted,  # a rollback waiting for the lock does not wait out the test
            )
        except LoadtestError as exc:
            raise PromotionError(f"load-test gate could not run: {exc}") from exc
    if report["breaches"]:
        raise PromotionError(f"load-test gate: {'; '.join(report['breaches'])} (report {out})")
    stats = report["stats"]
    return {
        "report": str(out),
        "payload": payload,
        **{
            k: stats[k] for k in sorted(stats) if k in ("p95_ms", "p99_ms", "rps", "error_rate", "requests", "failures")
        },
    }


def smoke_test(url: str, bundle_dir: Path, rows: int = 8, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Ready, then a prediction whose classes and probabilities match the card; raise PromotionError if not.

    ``headers`` carry the API key when the slot requires one (``Settings.prediction_headers``)."""
    import httpx

    from deploy.targets.traffic import predict_path, sample_rows

    card = ModelCard.read(bundle_dir)
    ready, why = probe(f"{url}/ready", timeout=5)
    if ready == 0:
        raise PromotionError(f"smoke test: {url}/ready did not answer: {why}")
    if ready != 200:
        raise PromotionError(f"smoke test: {url}/ready answered {ready}, not 200")
    batch = sample_rows(bundle_dir, rows, seed=1)
    resp = httpx.post(url + predict_path(card.name), json={"instances": batch}, headers=headers, timeout=10)
    if resp.status_code != 200:
        raise PromotionError(f"smoke test: prediction answered {resp.status_code}: {resp.text[:200]}")
    preds = resp.json().get("predictions", [])
    bad = [p for p in preds if p.get("class") not in card.classes or abs(sum(p.get("probabilities", [])) - 1.0) > 1e-3]
    if len(preds) != rows or bad:
        raise PromotionError(f"smoke test: {len(preds)} predictions for {rows} rows, {len(bad)} malformed")
    return {"rows": rows, "status": 200, "model_version": resp.json().get("model_version")}

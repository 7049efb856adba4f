"""`promote staging`'s image gate: the version's serving image must have passed `mlrelease scan`, digest for digest,
before it is staged (``promotion.require_scanned_image``). Canary and production take the staged version, so the
gate at staging covers them; the image's digest goes on every move's audit record."""

from __future__ import annotations

from typing import Any

from registry.image import IMAGE_DIGEST_TAG, IMAGE_REF_TAG, PASSED, SCAN_DIGEST_TAG, SCAN_TAG, SCANNED_AT_TAG
from registry.image import short_digest as short
from release.context import Context
from release.outcome import Outcome, PromotionError

SETTING = "promotion.require_scanned_image"


def gate_on(p: Context) -> bool:
    """Whether this command's `promote staging` gates on the scanned image."""
    return p.params.scanned_image_required(p.target.runs_image)  # the container runtime does; processes do not


def image_problem(version: str, tags: dict[str, str]) -> str | None:
    """Why the version's image may not be staged (what is wrong and what to run), or None when its digest passed."""
    digest = tags.get(IMAGE_DIGEST_TAG)
    if not digest:
        return f"version {version} has no image: run `mlrelease build --version {version}`, then `mlrelease scan`"
    ref = tags.get(IMAGE_REF_TAG)
    scan = f"`mlrelease scan --image {ref}`" if ref else "`mlrelease scan`"
    image = f"the image {short(digest)} of version {version}"
    verdict, scanned = tags.get(SCAN_TAG), tags.get(SCAN_DIGEST_TAG)
    if not verdict or not scanned:
        return f"{image} has not passed `mlrelease scan`: run {scan}"
    if scanned != digest:
        return f"{image}: the scanned digest ({short(scanned)}) differs from the built one: scan again ({scan})"
    if verdict != PASSED:
        when = tags.get(SCANNED_AT_TAG)
        return (
            f"{image} was scanned as failed{f' at {when}' if when else ''}: fix what reports/scan.md lists, then "
            f"`mlrelease build --version {version}` and `mlrelease scan` again"
        )
    return None


def check_image(p: Context, version: str, tags: dict[str, str], force: bool, reason: str | None, out: Outcome) -> str:
    """The gate's verdict for the audit evidence ("passed", "off", or "overridden: why"); exit 2 with what to run
    when the image has not passed and no ``--force`` overrides it (every ``--force`` is recorded as forced)."""
    if not gate_on(p):
        return "off"
    problem = image_problem(version, tags)
    if problem is not None and not force:
        raise PromotionError(f"{problem}; or override with --force --reason TEXT ({SETTING} is on)", exit_code=2)
    if force:
        recorded = "would be recorded" if p.dry_run else "recorded"
        what = (
            "needs no override (the image passed `mlrelease scan`)" if problem is None else f"is overridden: {problem}"
        )
        out.say(f"--force: the image gate {what}; {recorded} as forced: {reason}")
    return "passed" if problem is None else f"overridden: {problem}"


def image_evidence(tags: dict[str, str], gate: str) -> dict[str, Any]:
    """The image part of a staging record's evidence: the gate's verdict and what the registry said."""
    found = {
        "gate": gate,
        "ref": tags.get(IMAGE_REF_TAG),
        "scan": tags.get(SCAN_TAG),
        "scanned_digest": tags.get(SCAN_DIGEST_TAG),
    }
    return {k: v for k, v in found.items() if v is not None}

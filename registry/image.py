"""The serving image's tags on a model version: what `mlrelease build` built (reference, digest, size) and what
`mlrelease scan` decided about it (verdict, the digest it scanned, when). Written here, read by release/'s gate."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlrelease.core.settings import Settings

IMAGE_REF_TAG = "image_ref"
IMAGE_DIGEST_TAG = "image_digest"  # set by deploy.image.build.record_on_registry
SCAN_TAG = "image_scan"  # "passed" or "failed"
SCAN_DIGEST_TAG = "image_scan_digest"  # the digest that verdict is about
SCANNED_AT_TAG = "image_scanned_at"  # ISO 8601, UTC
PASSED, FAILED = "passed", "failed"


def scan_tags(digest: str, passed: bool, at: dt.datetime | None = None) -> dict[str, str]:
    """The tags that record one scan verdict of the image ``digest``."""
    when = (at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {SCAN_TAG: PASSED if passed else FAILED, SCAN_DIGEST_TAG: digest, SCANNED_AT_TAG: when}


def record_scan(
    model_name: str, version: str, digest: str, passed: bool, settings: Settings | None = None
) -> dict[str, str]:
    """Tag the model version the image was built from with the scan's verdict; return the tags written. A failed
    scan is recorded too: it replaces an earlier pass of the same version."""
    from registry.client import get_client

    client = get_client(settings)
    tags = scan_tags(digest, passed)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    return tags


def untagged(ref: str) -> str:
    """An image reference without its tag or digest (``registry:5000/team/model``: a port is not a tag)."""
    repository = ref.split("@", 1)[0]
    name, _, tag = repository.rpartition(":")
    return name if name and "/" not in tag else repository


def pinned_image(tags: dict[str, str]) -> str | None:
    """The version's image as ``repository@sha256:…`` (what a container runtime runs), None when it has none."""
    ref, digest = tags.get(IMAGE_REF_TAG), tags.get(IMAGE_DIGEST_TAG)
    return f"{untagged(ref)}@{digest}" if ref and digest else None


def short_digest(digest: str | None, hex_chars: int = 12) -> str:
    """``sha256:0123456789ab`` for a full digest (tables, one-line messages); "" for none."""
    if not digest:
        return ""
    algo, _, hexes = digest.partition(":")
    return f"{algo}:{hexes[:hex_chars]}" if hexes else digest[:hex_chars]

"""Deployment targets: where a model version runs and how traffic reaches it, made by one factory.

Orchestration gets its target from :func:`make_target` and talks to it only through
:class:`deploy.targets.base.DeploymentTarget`; the concrete target is imported when it is made, so importing this
package stays cheap (the incident rollback's fast path does).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from deploy.targets.base import DeploymentError, DeploymentTarget

TARGET_VAR = "MLRELEASE_TARGET"
KNOWN_TARGETS = ("local",)
TLS_CERT_VAR, TLS_KEY_VAR = "MLRELEASE_TLS_CERT", "MLRELEASE_TLS_KEY"


def make_target(
    state_dir: Path,
    kind: str | None = None,
    *,
    ready_timeout_s: float = 90.0,
    drain_timeout_s: float = 15.0,
    replicas: Mapping[str, int] | None = None,
    metrics_headers: Mapping[str, str] | None = None,
) -> DeploymentTarget:
    """The deployment target of kind ``kind`` (default: ``$MLRELEASE_TARGET``, else ``local``) keeping its state
    in ``state_dir``, running ``replicas[environment]`` servers per slot (default 1); an unknown kind is a one-line
    error naming the known ones. The router's TLS certificate comes from ``MLRELEASE_TLS_CERT`` and
    ``MLRELEASE_TLS_KEY`` (default: self-signed for localhost). ``metrics_headers`` go with every scrape of a
    slot's /metrics (the API key, when the servers protect it)."""
    chosen = kind or os.environ.get(TARGET_VAR) or "local"
    if chosen == "local":
        from deploy.targets.local.target import LocalTarget

        return LocalTarget(
            state_dir,
            ready_timeout_s=ready_timeout_s,
            drain_timeout_s=drain_timeout_s,
            replicas=replicas,
            metrics_headers=metrics_headers,
            tls_cert=os.environ.get(TLS_CERT_VAR) or None,
            tls_key=os.environ.get(TLS_KEY_VAR) or None,
        )
    raise DeploymentError(
        f"unknown deployment target {chosen!r} ({TARGET_VAR}): known targets: {', '.join(KNOWN_TARGETS)}"
    )


__all__ = ["DeploymentError", "DeploymentTarget", "make_target"]

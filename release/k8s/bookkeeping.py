"""The registry and audit trail of Kubernetes production, the same records the local target writes: the alias
``production`` names the version the deployment branch pins, and each delivery or rollback is an audit record
(``mlrelease history``) whose evidence says ``target: kubernetes``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.image import IMAGE_DIGEST_TAG
from registry.versions import Registry
from release.audit import AuditLog, AuditRecord, record
from release.states import PASSED_TAG, PROD, ROLLED_BACK_TAG

TARGET = "kubernetes"
SETTLED = ("done", "forced")  # the outcomes of a move that happened


@dataclass
class Books:
    """Where Kubernetes production's bookkeeping goes: the registry and the audit log, on behalf of one actor."""

    registry: Registry
    state_dir: Path
    by: str

    @property
    def audit(self) -> AuditLog:
        """The audit log under MLRELEASE_HOME's state folder (``mlrelease history`` reads it)."""
        return AuditLog(self.state_dir)

    def note(self, entry: AuditRecord) -> None:
        """The durable log line first, then the registry tags (as every release command records)."""
        record(self.audit, entry, self.registry.model_name, lambda: self.registry.client)


def production_moves(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The audit records that moved the alias ``production`` (promotions and rollbacks, local or Kubernetes)."""
    return [
        r
        for r in records
        if r.get("environment") == PROD
        and r.get("alias") == PROD
        and r.get("action") in ("promote", "rollback")
        and r.get("outcome") in SETTLED
        and r.get("to_version")
    ]


def previous_production(moves: list[dict[str, Any]], current: str) -> str | None:
    """The version production served before ``current``: the latest other one no rollback has withdrawn since."""
    history: list[str] = []
    withdrawn: set[str] = set()
    for move in moves:
        to = str(move["to_version"])
        withdrawn.discard(to)
        if move["action"] == "rollback" and move.get("from_version"):
            withdrawn.add(str(move["from_version"]))
        history.append(to)
    return next((v for v in reversed(history) if v != current and v not in withdrawn), None)


def record_delivery(books: Books, version: str, image: str, delivery: str, reason: str | None) -> str | None:
    """Production's alias moved to ``version`` once its overlay is delivered to the deployment branch (a commit, or
    a pull request to merge); returns the version it left. Argo Rollouts' canary gates it in the cluster."""
    previous = books.registry.alias(PROD)
    books.registry.set_alias(PROD, version)
    books.note(
        AuditRecord(
            "promote",
            PROD,
            books.by,
            to_version=version,
            from_version=previous,
            alias=PROD,
            reason=reason or "delivered to Kubernetes: Argo Rollouts runs its canary under analysis",
            evidence={"target": TARGET, "image": image, "delivery": delivery},
            image_digest=image.partition("@")[2] or None,  # the pods pull it by digest
        )
    )
    return previous


def record_rollback(books: Books, away: str, to: str, reason: str, evidence: dict[str, Any]) -> None:
    """Production's alias back on ``to``; ``away`` tagged rolled back and its canary pass withdrawn, as the local
    rollback does; the audit record says the target and what the on-call runs against the Rollout."""
    books.registry.set_alias(PROD, to)
    books.registry.delete_alias("canary", only=away)
    books.registry.set_tag(away, ROLLED_BACK_TAG, reason[:500])
    books.registry.set_tag(away, PASSED_TAG["canary"], "false")
    digest = books.registry.tags(to).get(IMAGE_DIGEST_TAG)
    books.note(
        AuditRecord(
            "rollback",
            PROD,
            books.by,
            to_version=to,
            from_version=away,
            alias=PROD,
            reason=reason,
            evidence={"target": TARGET, **evidence},
            image_digest=digest,
        )
    )

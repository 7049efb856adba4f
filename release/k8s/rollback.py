"""``scripts/rollback.sh --target kubernetes``: production's previous version rendered for the deployment branch,
the one command that takes the canary's traffic away now, and the same registry and audit bookkeeping as the
local rollback. Nothing here reaches the cluster: the on-call (or the rollback workflow's summary) runs the command,
and the GitOps sync brings the previous version back (Argo Rollouts' rollbackWindow skips the canary steps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlrelease.core.errors import UserError
from mlrelease.core.params import CanaryParams, PromotionParams
from registry.versions import VersionNotFound
from release.k8s.bookkeeping import Books, previous_production, production_moves, record_rollback
from release.k8s.render import release_of, render, rollout_commands
from release.outcome import Outcome
from release.states import PROD

DEFAULT_REASON = "incident rollback"


@dataclass(frozen=True)
class Where:
    """The kustomize tree and the settings a Kubernetes render needs."""

    k8s_dir: Path
    canary: CanaryParams
    promotion: PromotionParams
    image_repository: str | None = None
    prometheus_url: str | None = None


def plan(books: Books, to: str | None, out: Outcome) -> tuple[str, str | None]:
    """(version production's alias names, version to go back to); goal None when there is nothing to do."""
    current = books.registry.alias(PROD)
    if current is None:
        raise UserError("production has no version (the registry's alias `production` is unset): nothing to roll back")
    if to is not None:
        try:
            books.registry.require_registered(to)
        except VersionNotFound as exc:
            raise UserError(str(exc)) from exc
        if to == current:
            out.say(f"production already names version {to}; nothing to do")
            return current, None
        return current, to
    moves = production_moves(books.audit.records())
    last = moves[-1] if moves else None
    if last is not None and last["action"] == "rollback" and str(last["to_version"]) == current:
        out.say(f"already rolled back from version {last['from_version']} to {current} ({last['when']}); nothing to do")
        return current, None
    goal = previous_production(moves, current)
    if goal is None:
        raise UserError(f"no previous production version of {current} is known; pass --to VERSION")
    return current, goal


def rollback(books: Books, where: Where, to: str | None, reason: str | None, dry_run: bool = False) -> Outcome:
    """Render production for the previous (or ``to``) version, say how to stop the running Rollout, record it."""
    out = Outcome()
    reason = reason or DEFAULT_REASON
    current, goal = plan(books, to, out)
    pinned = goal or current
    release = release_of(books.registry, pinned, PROD, where.image_repository)
    done = render(release, where.k8s_dir, where.canary, where.promotion, where.prometheus_url, dry_run=dry_run)
    commands = rollout_commands(where.k8s_dir)
    wrote = "would render" if dry_run else "rendered"
    out.say(f"{wrote} {done.folder} for version {pinned} ({release.image_ref}); deliver it to the deployment branch")
    if goal is None:
        return out
    out.say(f"now, to take version {current}'s canary off traffic at once: {commands['abort']}")
    out.say(f"if version {current} had finished its canary (it is the Rollout's stable): {commands['undo']}")
    if dry_run:
        out.say(f"would move alias production {current} -> {goal} and tag version {current} rolled_back")
        return out
    evidence = {"rendered": str(done.folder), "image": release.image_ref, **commands}
    record_rollback(books, current, goal, reason, evidence)
    out.say(f"alias production -> {goal}; version {current} tagged rolled_back (audit: target kubernetes)")
    return out

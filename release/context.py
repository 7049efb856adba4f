"""The context every release transition runs in: settings, thresholds, the target, the registry, the actor,
the journal and audit log, and the small helpers the transitions share (lock-aware sleep, abort checks, bundles).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.targets.base import DeploymentError, DeploymentTarget
from mlrelease.core.http import wait_until
from mlrelease.core.params import CanaryParams, PromotionParams
from mlrelease.core.settings import Settings
from registry.client import is_registry_error
from registry.image import IMAGE_DIGEST_TAG, pinned_image
from registry.versions import Registry, VersionNotFound
from release.audit import AuditLog, AuditRecord, record
from release.journal import Journal, abort_requested
from release.outcome import Outcome, PromotionError
from release.states import PROD

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a release command runs against: one target, registry and audit log, on behalf of one actor."""

    settings: Settings
    model_name: str
    canary_params: CanaryParams
    params: PromotionParams
    target: DeploymentTarget
    registry: Registry
    by: str
    dry_run: bool = False
    reports_dir: Path = field(default_factory=lambda: Path("reports"))
    loadtest: Any = None  # deploy.loadtest.runner.LoadtestParams, parsed from params.yaml by the CLI
    target_column: str = "target"
    _tags: dict[str, dict[str, str]] = field(default_factory=dict, init=False, repr=False)  # read this command
    registry_silent: bool = field(default=False, init=False, repr=False)  # it did not answer a digest read

    @property
    def state_dir(self) -> Path:
        """Where the journal, the audit log, the lock and the target's state live."""
        return self.settings.state_dir

    @property
    def journal(self) -> Journal:
        """The release journal (the operation in flight, production's history, the last rollback)."""
        return Journal(self.state_dir)

    @property
    def audit(self) -> AuditLog:
        """The append-only audit log of every alias and traffic change."""
        return AuditLog(self.state_dir)

    def note(self, entry: AuditRecord) -> None:
        """Record an audit entry (log + tags) unless this is a dry run."""
        entry.dry_run = self.dry_run
        if not self.dry_run:
            record(self.audit, entry, self.model_name, lambda: self.registry.client)

    def image_digest(self, version: str | None) -> str | None:
        """The version's image digest (its ``image_digest`` tag) for an audit record; None when it has none, or when
        the registry does not answer: a record never fails for it, and a down registry is asked once per command."""
        if version is None:
            return None
        if version not in self._tags and not self.registry_silent:
            try:
                self.version_tags(version)
            except VersionNotFound:
                self._tags[version] = {}
            except Exception as exc:
                if not is_registry_error(exc):
                    raise
                log.warning("the image digest of version %s is left off its audit record: %s", version, exc)
                self.registry_silent = True
        return self._tags.get(version, {}).get(IMAGE_DIGEST_TAG)

    def version_tags(self, version: str) -> dict[str, str]:
        """The version's registry tags, read once per command: the image gate, the image deployed and the audit
        record see the same digest, even if a rebuild lands meanwhile."""
        if version not in self._tags:
            self._tags[version] = self.registry.tags(version)
        return self._tags[version]

    def deploy_new(self, env: str, slot: str, bundle: Path, version: str) -> str:
        """Start the command's new version in ``slot``; a rollback asking for the lock stops the wait for it."""
        with self.interruptible():
            return self.target.deploy(env, slot, bundle, version, image=self.image_to_run(version))

    def image_to_run(self, version: str) -> str | None:
        """The version's image by digest when the target runs images (None otherwise, or when it has none: the
        target then refuses it, naming `mlrelease build`)."""
        if not self.target.runs_image:
            return None
        return pinned_image(self.version_tags(version))

    @contextmanager
    def interruptible(self, enabled: bool = True) -> Iterator[None]:
        """While the target waits for a server to become ready, a rollback's abort request stops the wait and this
        command (PromotionError), so the rollback gets the lock within seconds, not after a whole ready timeout.
        Never for a rollback itself, nor for the clean-up of a failed step (it must run to the end)."""
        if not enabled:
            yield
            return
        outer, self.target.interrupt = self.target.interrupt, self.stop_if_aborted
        try:
            yield
        finally:
            self.target.interrupt = outer

    def bundle(self, version: str) -> Path:
        """Fetch and verify the bundle; a sha256 mismatch stops here, before any process or traffic."""
        from mlrelease.core.modelcard import IntegrityError

        try:
            return self.registry.bundle(version, self.state_dir / "bundles")
        except IntegrityError as exc:
            self.note(
                AuditRecord("integrity-check", PROD, self.by, to_version=version, outcome="rejected", reason=str(exc))
            )
            raise PromotionError(
                f"version {version} refused: {exc}. It never got traffic; register a good artifact as a new version"
            ) from exc

    def require_registered(self, version: str) -> str:
        """``version`` when the registry has it; else exit 2 naming the versions it has (checked before anything is
        journaled, so a typo never leaves an operation to recover)."""
        try:
            return self.registry.require_registered(version)
        except VersionNotFound as exc:
            raise PromotionError(str(exc), exit_code=2) from exc

    def require_version(self, given: str | None, alias: str, hint: str) -> str:
        """The version given, else the one ``alias`` names; exit 2 with ``hint`` when there is none."""
        if given:
            return self.require_registered(given)
        version = self.registry.alias(alias)
        if version is None:
            raise PromotionError(f"no version has alias `{alias}` for {self.model_name}; {hint}", exit_code=2)
        return str(version)

    def write_report(self, name: str, data: dict[str, Any]) -> Path:
        """Write a gate's evidence as JSON under the reports folder; return its path."""
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        path = self.reports_dir / name
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return path

    def stop_if_aborted(self) -> None:
        """Raise when a rollback asked the running promotion to stop (its abort request file is there)."""
        if abort_requested(self.state_dir):
            raise PromotionError(
                "aborted: a rollback (scripts/rollback.sh) asked for the lock; run this command again once it is done"
            )

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when a rollback asks this promotion to abort (PromotionError)."""
        wait_until(lambda: False, seconds, interrupt=self.stop_if_aborted)

    def unstaged_candidate(self, staged: str) -> str:
        """A hint when a newer candidate than ``staged`` waits: it reaches canary only through staging."""
        candidate = self.registry.alias("candidate")
        if candidate is None or not candidate.isdigit() or not staged.isdigit() or int(candidate) <= int(staged):
            return ""
        return f" (the candidate, version {candidate}, is not staged yet: `mlrelease promote staging` first)"

    def route_all(self, env: str, slot: str, out: Outcome) -> None:
        """``set_weights({slot: 100})``, after the target restarts the slot if it does not answer as itself."""
        if not wait_identity(self.target, env, slot, 1.0):
            self.revive(env, slot, out, then="run the command again")
        self.target.set_weights(env, {slot: 100})

    def revive(self, env: str, slot: str, out: Outcome, then: str) -> None:
        """Let the target restart a slot that does not answer as itself (never replaced: it holds or is to take
        the traffic), then wait for it; DeploymentError naming the problem and ``then`` if it does not come back."""
        for line in self.target.reconcile():
            log.warning("reconciled: %s", line)  # live: a command that fails after this never prints its summary
            out.say(f"reconciled: {line}")
        if not wait_identity(self.target, env, slot, self.params.ready_timeout):
            raise DeploymentError(
                f"{env}/{slot} is to take the traffic but is not ready: {self.target.slot_problem(env, slot)}. "
                f"Next: check {self.state_dir / 'logs'} and `mlrelease status`, then {then}"
            )


def wait_identity(target: DeploymentTarget, environment: str, slot: str, timeout: float = 5.0) -> bool:
    """Wait until the slot is ready and answers as its own version and bundle (not just anything on its port)."""
    return wait_until(lambda: target.slot_problem(environment, slot) is None, timeout, interval=0.05)

"""Gated, idempotent, audited moves of a model version: candidate -> staging -> canary -> production, and back.

The MLflow registry is the source of truth (aliases ``staging``, ``canary``, ``production``); the deployment
target runs the versions and routes traffic; the audit log records every alias and traffic change. Every command
takes the promotion lock, first finishes or undoes a promotion that crashed (its journal is in the state file),
and leaves all traffic on a healthy version whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deploy.targets.base import DeploymentError, DeploymentTarget
from deploy.targets.state import DeployState, Operation, RollbackMark, StateStore
from mlrelease.core.locking import PromotionLocked, promotion_lock
from mlrelease.core.modelcard import ModelCard, verify_bundle
from mlrelease.core.settings import Settings
from registry.analysis import CanaryParams, parse_duration
from registry.audit import AuditLog, AuditRecord, record
from registry.client import brief_requests, get_client, is_not_found, is_registry_error
from registry.fast_rollback import process_started, switched_to

log = logging.getLogger(__name__)
PROD, STAGING = "production", "staging"
ABORT_FILE = "abort.request"
UNJOURNALED = frozenset({"rollback", "reconcile"})  # see Promoter.operation
# the slot each journaled command starts its new version in: recovery stops it (only it) once it has no traffic
NEW_SLOT_OF = {
    "promote staging": (STAGING, "pending"),
    "promote canary": (PROD, "canary"),
    "promote production": (PROD, "canary"),
}
PASSED_TAG = {"staging": "mlrelease.staging_passed", "canary": "mlrelease.canary_passed"}
PASSED_AGAINST_TAG = "mlrelease.canary_passed_against"  # the stable version the canary was compared with
ROLLED_BACK_TAG = "mlrelease.rolled_back"  # set on the version a rollback moved production away from


class PromotionError(RuntimeError):
    """A gate failed or a precondition is not met; ``exit_code`` and the message tell the operator what next."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RegistryBehind(RuntimeError):
    """Traffic moved but the registry did not follow: not a PromotionError, so the journal stays and the next run
    finishes the bookkeeping."""


class PromotionParams(BaseModel):
    """The ``promotion:`` section of params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rollback_window: float = 1800.0
    ready_timeout: float = 90.0
    drain_timeout: float = 15.0
    rollback_lock_wait: float = 15.0
    smoke_rows: int = Field(8, ge=1, le=256)
    load_gate: bool = True
    load_gate_rows: int = Field(500, ge=1, le=100_000)

    @field_validator("rollback_window", "ready_timeout", "drain_timeout", "rollback_lock_wait", mode="before")
    @classmethod
    def _duration(cls, value: str | float) -> float:
        return parse_duration(value)


@dataclass
class Outcome:
    """What a command did, as lines for the one-screen summary, plus the exit code."""

    lines: list[str] = field(default_factory=list)
    exit_code: int = 0

    def say(self, text: str) -> None:
        log.debug(text)
        self.lines.append(text)


class Registry:
    """The few MLflow registry operations promotion needs, on one registered model."""

    def __init__(self, model_name: str, settings: Settings) -> None:
        self.model_name = model_name
        self.settings = settings
        self._client: Any = None

    @property
    def client(self) -> Any:
        """One MlflowClient per command (creating one opens and checks the registry database)."""
        if self._client is None:
            self._client = get_client(self.settings)
        return self._client

    def alias(self, alias: str) -> str | None:
        """The version ``alias`` names, or None when it is unset; any other registry error propagates (an
        unreachable registry is not "no version has this alias")."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
            return None

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, version)

    def delete_alias(self, alias: str, only: str | None = None) -> str | None:
        """Remove the alias if it is set (and, given ``only``, names that version); return the version it named."""
        version = self.alias(alias)
        if version is not None and only in (None, version):
            self.client.delete_registered_model_alias(self.model_name, alias)
        return version

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name, version).tags)

    def require_registered(self, version: str) -> str:
        """``version`` when the registry has it; else a PromotionError naming the versions it does have (checked
        before anything is journaled, so a typo never leaves an operation to recover)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(self.model_name, version)
            return version
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
        found = self.client.search_model_versions(f"name='{self.model_name}'")
        known = ", ".join(str(v) for v in sorted(int(m.version) for m in found)) or "none"
        raise PromotionError(
            f"version {version!r} of {self.model_name} is not registered (registered versions: {known}); "
            "nothing was changed",
            exit_code=2,
        )

    def set_tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.model_name, version, key, value)

    def bundle(self, version: str, root: Path) -> Path:
        """The version's verified bundle (cached per version; re-verified against the registry's sha256)."""
        from registry.register import SHA_TAG, download_bundle

        dest = root / f"v{version}"
        expected = self.tags(version).get(SHA_TAG)
        if expected and (dest / "model_card.json").is_file():
            try:
                verify_bundle(dest, expected_sha256=expected)
                return dest
            except Exception:  # stale or tampered cache: fetch again
                log.warning("cached bundle %s does not verify; downloading again", dest)
        return download_bundle(str(version), self.model_name, dest, self.settings)


@dataclass
class Promoter:
    """Runs the promotion commands against one target, registry and audit log."""

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

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    @property
    def journal(self) -> StateStore:
        """Promotion's own state (journal of the running operation, production history, last rollback)."""
        return StateStore(self.state_dir)

    @property
    def audit(self) -> AuditLog:
        return AuditLog(self.state_dir)

    def note(self, entry: AuditRecord) -> None:
        """Record an audit entry (log + tags) unless this is a dry run."""
        entry.dry_run = self.dry_run
        if not self.dry_run:
            record(self.audit, entry, self.model_name, self.registry.client)

    # ----- journal, lock and crash recovery --------------------------------------------------------------------
    @contextmanager
    def operation(
        self,
        command: str,
        version: str,
        out: Outcome,
        wait_s: float = 0.0,
        reconcile: bool = True,
        reason: str | None = None,
        from_version: str | None = None,
    ) -> Iterator[Operation | None]:
        """Hold the lock, recover a crashed predecessor, journal this operation, clear it when done.

        A rollback journals itself once it has decided under the lock; it is handed the rollback it is to
        finish (an interrupted one, or its own fast path's), else None. A reconcile is not journaled: it only
        brings the slots and routers back to the state, so an interrupted one leaves nothing to undo (its
        journal entry would have made the next command "recover" by taking the canary's traffic away).
        """
        with promotion_lock(self.state_dir, command, self.by, wait_s=wait_s):
            interrupted = self.recover(out, resume_rollback=command == "rollback")
            if command != "rollback":
                self._clear_stale_abort()
            with self.interruptible(command != "rollback"):  # restarting a dead slot can take its ready timeout
                for line in self.target.reconcile() if reconcile else []:
                    out.say(f"reconciled: {line}")
            if command not in UNJOURNALED:
                self._journal(
                    Operation(
                        command=command,
                        version=version,
                        pid=os.getpid(),
                        by=self.by,
                        reason=reason,
                        from_version=from_version,
                    )
                )
            try:
                yield interrupted
            except PromotionError:
                self._journal(None)  # a handled failure: it already undid its own changes
                raise
            # any other error keeps the journal, so the next command's recover() puts traffic back on stable
            self._journal(None)

    def deploy_new(self, env: str, slot: str, bundle: Path, version: str) -> str:
        """Start the command's new version in ``slot``; a rollback asking for the lock stops the wait for it."""
        with self.interruptible():
            return self.target.deploy(env, slot, bundle, version)

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

    def _clear_stale_abort(self) -> None:
        """An abort request older than a rollback's lock wait was left by a rollback that gave up waiting: it
        was for the promotion that held the lock then, not for this one."""
        abort = self.state_dir / ABORT_FILE
        with contextlib.suppress(FileNotFoundError):
            if time.time() - abort.stat().st_mtime > self.params.rollback_lock_wait:
                abort.unlink()

    def _journal(self, op: Operation | None) -> None:
        state = self.journal.load()
        state.operation = op
        self.journal.save(state)

    def recover(self, out: Outcome, resume_rollback: bool = False) -> Operation | None:
        """A promotion that died (kill -9) left its journal: put all traffic on stable and undo the rest.

        An interrupted rollback is not undone: it is returned for the rollback command to finish, and any other
        command is refused until it is finished (an incident is in progress).
        """
        op = self.journal.load().operation
        if op is None:
            return None
        if op.command == "rollback":
            if resume_rollback:
                return op
            raise PromotionError(
                f"a rollback to version {op.version} by {op.by} (pid {op.pid}) is running or was "
                "interrupted; run `scripts/rollback.sh` to finish it, then retry",
                exit_code=3,
            )
        if op.command == "reconcile":  # journaled by an earlier mlrelease: it has nothing to undo
            self._journal(None)
            return None
        out.say(f"recovering from an interrupted `{op.command}` of version {op.version} (pid {op.pid})")
        if op.command == "promote production" and self.target.slot_version(PROD, "stable") == op.version:
            self._finish_interrupted_production(op, out, tolerate_registry=resume_rollback)
            self._journal(None)  # the switch was done: finished, not reported undone
            return None
        if op.command == "promote staging" and self._staging_switched(op):
            self._finish_interrupted_staging(op, out)  # its gates passed and its slot is stable: finish it
            self._journal(None)
            return None
        self._production_back_on_stable(out)
        if op.command == "promote staging":
            self._staging_back_on_stable(out)
        # only the interrupted command's own new slot: a passed canary kept warm at weight 0 waits for
        # `promote production`, and an interrupted `promote staging` must not take it away
        if op.command in NEW_SLOT_OF:
            env, slot = NEW_SLOT_OF[op.command]
            if self.target.slot_version(env, slot) is not None and self.target.weights(env).get(slot, 0) == 0:
                self.target.stop(env, slot)
                out.say(f"stopped {env}/{slot}")
        if op.command == "promote canary":
            self._drop_canary_alias_of(op.version, out)
        self.note(
            AuditRecord(
                "recover",
                PROD,
                self.by,
                to_version=op.version,
                outcome="undone",
                reason=f"interrupted `{op.command}` by {op.by} (pid {op.pid})",
            )
        )
        self._journal(None)
        return None

    def _production_back_on_stable(self, out: Outcome) -> None:
        """All production traffic on the stable slot (the previous one if a switch died between its renames),
        restarting that slot first if its process died with the command (a reboot, an OOM kill)."""
        if self.target.slot_version(PROD, "stable") is None and self.target.slot_version(PROD, "previous"):
            # `promote production` died between its two renames: the old stable is `previous`; put it back
            self._route_all(PROD, "previous", out)
            self.target.rename(PROD, "previous", "stable")
            out.say("traffic: 100% back on the previous production version, which is stable again")
        weights = self.target.weights(PROD)
        if weights and weights.get("stable", 0) < 100 and self.target.slot_version(PROD, "stable") is not None:
            self._route_all(PROD, "stable", out)
            out.say("traffic: 100% back on stable")

    def _staging_back_on_stable(self, out: Outcome) -> None:
        """Staging's record back on its stable slot; with none yet, the new slot (its gates had passed) becomes
        stable, so that the next `promote staging` can deploy again (it refuses to replace a slot with weight)."""
        if self.target.weights(STAGING).get("pending", 0) == 0:
            return
        if self.target.slot_version(STAGING, "stable") is None:
            self.target.rename(STAGING, "pending", "stable")
            out.say("staging: the new version's slot is now stable (its alias was not set: promote it again)")
            return
        self._route_all(STAGING, "stable", out)
        out.say("staging: back on its stable slot")

    def _route_all(self, env: str, slot: str, out: Outcome) -> None:
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

    def _finish_interrupted_production(self, op: Operation, out: Outcome, tolerate_registry: bool = False) -> None:
        """`promote production` died after its switch: all traffic on the new stable, then its alias, history
        and audit record, as the command would have written them. ``tolerate_registry``: for a rollback, which
        moves production away from it next, a registry that does not answer leaves that bookkeeping undone
        (said) instead of stopping the rollback before it moves any traffic."""
        self._route_all(PROD, "stable", out)  # a no-op when the switch already routed everything there
        try:
            tags = self.registry.tags(op.version)
            # the version it replaced, as journaled (the warm previous slot may have expired since)
            previous = op.from_version or self.target.slot_version(PROD, "previous")
            # as the command judged it: a pass measured against another stable than the one replaced was forced
            passed = tags.get(PASSED_TAG["canary"]) == "true" and _stale_pass(tags, previous) is None
            reason = f"finished by recovery: `promote production` by {op.by} (pid {op.pid}) died after its switch"
            self._finish_production(
                op.version, previous, passed, f"{reason}; its reason: {op.reason}" if op.reason else reason
            )
        except Exception as exc:
            if not (tolerate_registry and is_registry_error(exc)):
                raise
            out.say(
                f"production: version {op.version} serves 100% of traffic, switched by a `promote production` that "
                f"died; its alias could not be set (the registry did not answer: {exc}); the rollback goes on"
            )
            return
        out.say(f"production: version {op.version} serves 100% of traffic; its alias and history are now set")

    def _drop_canary_alias_of(self, version: str, out: Outcome) -> None:
        """The canary alias of an undone `promote canary`, if it names that version. A registry that does not
        answer leaves it (said, not raised): recovery must not stop an incident's rollback over bookkeeping."""
        try:
            self.registry.delete_alias("canary", only=version)
        except Exception as exc:
            if not is_registry_error(exc):
                raise
            out.say(
                f"the canary alias could not be checked (the registry did not answer: {exc}); it may name {version}"
            )

    def _staging_switched(self, op: Operation) -> bool:
        """`promote staging` died after its gates passed and its new slot became stable (renamed: no pending slot
        left), before the alias: staging serves the new version, so reporting it undone would leave the alias on a
        version nothing serves. A registry that does not answer says no: recovery then undoes as before."""
        if self.target.slot_version(STAGING, "stable") != op.version or self.target.slot(STAGING, "pending"):
            return False
        try:
            return self.registry.alias(STAGING) != op.version
        except Exception as exc:
            if not is_registry_error(exc):
                raise
            return True  # switched all the same: finishing says what the registry could not take

    def _finish_interrupted_staging(self, op: Operation, out: Outcome) -> None:
        """The alias, tag and audit record the interrupted `promote staging` would have written; a registry that
        does not answer leaves the alias (said, with what to run), never an "undone" record for a done switch."""
        reason = f"finished by recovery: `promote staging` by {op.by} (pid {op.pid}) died after its gates and switch"
        try:
            self.registry.set_alias(STAGING, op.version)
            self.registry.set_tag(op.version, PASSED_TAG["staging"], "true")
        except Exception as exc:
            if not is_registry_error(exc):
                raise
            self.note(
                AuditRecord("promote", STAGING, self.by, to_version=op.version, reason=reason, outcome="alias not set")
            )
            out.say(
                f"staging: version {op.version} serves staging (its gates had passed), but its alias could not be "
                f"set (the registry did not answer: {exc}); once it answers: `mlrelease promote staging --version "
                f"{op.version}`"
            )
            return
        self.note(AuditRecord("promote", STAGING, self.by, to_version=op.version, alias=STAGING, reason=reason))
        out.say(f"staging: version {op.version} serves staging (its gates had passed); alias staging -> {op.version}")

    # ----- helpers --------------------------------------------------------------------------------------------
    def _unstaged_candidate(self, staged: str) -> str:
        """A hint when a newer candidate than ``staged`` waits: it reaches canary only through staging."""
        candidate = self.registry.alias("candidate")
        if candidate is None or not candidate.isdigit() or not staged.isdigit() or int(candidate) <= int(staged):
            return ""
        return f" (the candidate, version {candidate}, is not staged yet: `mlrelease promote staging` first)"

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

    def require_version(self, given: str | None, alias: str, hint: str) -> str:
        if given:
            return self.registry.require_registered(given)
        version = self.registry.alias(alias)
        if version is None:
            raise PromotionError(f"no version has alias `{alias}` for {self.model_name}; {hint}", exit_code=2)
        return str(version)

    def write_report(self, name: str, data: dict[str, Any]) -> Path:
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        path = self.reports_dir / name
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return path

    def refuse_while_running(self, command: str) -> None:
        """A promotion holding the lock is named before any precondition is checked: advice drawn from the state it
        is changing would be wrong (a canary under way "has not passed canary"). PromotionLocked names the holder."""
        if not self.dry_run:
            with promotion_lock(self.state_dir, command, self.by):
                pass

    def stop_if_aborted(self) -> None:
        """Raise when a rollback asked the running promotion to stop (its abort request file is there)."""
        if (self.state_dir / ABORT_FILE).exists():
            raise PromotionError(
                "aborted: a rollback (scripts/rollback.sh) asked for the lock; run this command again once it is done"
            )

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when a rollback asks this promotion to abort."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.stop_if_aborted()
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    # ----- staging ---------------------------------------------------------------------------------------------
    def promote_staging(self, version: str | None) -> Outcome:
        """Deploy to staging, run the smoke test and the load-test gate, then move the ``staging`` alias."""
        out = Outcome()
        self.refuse_while_running("promote staging")
        version = self.require_version(version, "candidate", "register one first (`mlrelease run`)")
        if (
            self.registry.alias(STAGING) == version
            and self.target.slot_version(STAGING, "stable") == version
            and wait_identity(self.target, STAGING, "stable", 1.0)
        ):
            out.say(f"staging already serves version {version} and has the alias; nothing to do")
            return out
        if self.dry_run:
            out.say(f"would deploy version {version} to staging, run smoke + load gates, set alias staging")
            return out
        with self.operation("promote staging", version, out):
            self.stop_if_aborted()  # a rollback waiting for the lock goes first: staging can wait, an incident not
            bundle = self.bundle(version)
            url = self.deploy_new(STAGING, "pending", bundle, version)
            evidence = self._staging_gates(version, url, bundle)
            previous = self.target.slot_version(STAGING, "stable")
            self.target.set_weights(STAGING, {"pending": 100})  # staging has no router: this only records it
            self.target.rename(STAGING, "pending", "stable")  # the old staging slot is stopped
            self.registry.set_alias(STAGING, version)
            self.registry.set_tag(version, PASSED_TAG["staging"], "true")
            self.note(
                AuditRecord(
                    "promote",
                    STAGING,
                    self.by,
                    to_version=version,
                    from_version=previous,
                    alias=STAGING,
                    evidence=evidence,
                    reason="smoke and load gates passed",
                )
            )
            out.say(f"staging: version {version} on {url}; alias staging -> {version}")
        return out

    def _staging_gates(self, version: str, url: str, bundle: Path) -> dict[str, Any]:
        """Smoke test then load gate; on failure stop the new slot, record why, keep staging as it was."""
        try:
            self.stop_if_aborted()
            evidence: dict[str, Any] = {
                "smoke": smoke_test(url, bundle, self.params.smoke_rows, self.settings.prediction_headers())
            }
            if self.params.load_gate:
                evidence["loadtest"] = self.load_gate(url, version, bundle)
            return evidence
        except Exception as exc:  # a failed gate, or a timeout/connection error while checking it
            self.target.stop(STAGING, "pending")
            self.note(
                AuditRecord(
                    "promote", STAGING, self.by, to_version=version, alias=STAGING, outcome="failed", reason=str(exc)
                )
            )
            raise PromotionError(f"staging gate failed for version {version}: {exc}; staging unchanged") from exc

    def load_gate(self, url: str, version: str, bundle: Path) -> dict[str, Any]:
        """The serving engineer's Locust gate (deploy/loadtest) against the staging slot, SLOs from params.yaml.

        Payloads are the home's test split when it fits the version, else rows sampled from the version's
        reference statistics: a deployment host need not have run the pipeline."""
        from deploy.loadtest.runner import LoadtestError, LoadtestParams, run_loadtest, write_gate_rows

        out = self.reports_dir / f"loadtest_staging_v{version}.json"
        test_csv = self.settings.home / "data" / "prepared" / "test.csv"
        with tempfile.TemporaryDirectory(prefix="mlrelease-gate-") as tmp:
            rows_csv = Path(tmp) / "rows.csv"
            payload = write_gate_rows(bundle, test_csv, self.target_column, self.params.load_gate_rows, rows_csv)
            try:
                params = self.loadtest or LoadtestParams.model_validate({})
                report = run_loadtest(
                    url,
                    params,
                    rows_csv,
                    self.target_column,
                    out,
                    out.with_suffix(".html"),
                    self.settings.prediction_headers(),
                    stop=self.stop_if_aborted,  # a rollback waiting for the lock does not wait out the test
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
                k: stats[k]
                for k in sorted(stats)
                if k in ("p95_ms", "p99_ms", "rps", "error_rate", "requests", "failures")
            },
        }

    # ----- canary ----------------------------------------------------------------------------------------------
    def promote_canary(
        self, steps: list[float] | None, interval: float | None, force: bool = False, reason: str | None = None
    ) -> Outcome:
        """Start the canary slot with the staging version and shift traffic step by step under analysis.

        A version once rolled back from production is refused unless ``force`` with a reason: its aliases may
        still point at it, and an incident's culprit should not take traffic again by default."""
        out = Outcome()
        self.refuse_while_running("promote canary")
        updates = {k: v for k, v in {"steps": steps, "interval": interval}.items() if v}
        try:  # validate, so --steps cannot give the canary the majority of traffic
            params = CanaryParams.model_validate({**self.canary_params.model_dump(), **updates})
        except ValidationError as exc:
            raise PromotionError(f"invalid canary settings {updates}: {exc.errors()[0]['msg']}", exit_code=2) from exc
        version = self.require_version(None, STAGING, "promote a version to staging first")
        stable = self.target.slot_version(PROD, "stable")
        if stable is None:
            raise PromotionError(
                "production has no stable version to compare a canary with; the first release "
                "goes `mlrelease promote production --version V --force --reason 'first release'`",
                exit_code=2,
            )
        if stable == version:
            out.say(f"version {version} already serves production; nothing to do{self._unstaged_candidate(version)}")
            return out
        tags = self.registry.tags(version)
        fresh = tags.get(PASSED_TAG["canary"]) == "true" and not _stale_pass(tags, stable)
        if fresh and self.registry.alias("canary") == version:
            out.say(f"version {version} already passed canary; next: `mlrelease promote production`")
            return out
        if ROLLED_BACK_TAG in tags and not (force and reason and reason.strip()):
            raise PromotionError(
                f"version {version} was rolled back from production ({tags[ROLLED_BACK_TAG]}); register a fixed "
                "version and promote it to staging, or canary this one again with --force --reason TEXT",
                exit_code=2,
            )
        if ROLLED_BACK_TAG in tags:
            out.say(f"version {version} was rolled back before ({tags[ROLLED_BACK_TAG]}); canaried again: {reason}")
        if self.dry_run:
            out.say(
                f"would canary version {version} against stable {stable} at steps {params.steps}% "
                f"every {params.interval:g} s"
            )
            return out
        with self.operation("promote canary", version, out):
            self._run_canary(version, stable, params, out)
        return out

    def _run_canary(self, version: str, stable: str, params: CanaryParams, out: Outcome) -> None:
        from registry.analysis import run_analysis

        bundle = self.bundle(version)
        try:
            self.deploy_new(PROD, "canary", bundle, version)
        except PromotionError as exc:  # a rollback took over before the canary got any traffic: say who stopped it
            self._note_canary_rollback(version, stable, f"{exc} (its server was still starting; it took no traffic)")
            raise
        self.registry.set_alias("canary", version)
        self.note(
            AuditRecord(
                "alias", PROD, self.by, to_version=version, from_version=stable, alias="canary", reason="canary started"
            )
        )
        try:
            analysis = run_analysis(self, version, stable, params, out)
        except PromotionError as exc:
            self.abort_canary(version, stable, str(exc), {}, out)
            raise
        except Exception as exc:  # a crashed analysis, a canary that died, a failed reload: never keep its traffic
            self.abort_canary(version, stable, f"analysis error: {exc}", {}, out)
            raise PromotionError(
                f"canary of version {version} rolled back after an error: {exc}; production stays on version {stable}"
            ) from exc
        evidence = {"report": str(analysis["report"]), "measurements": analysis["measurements"]}
        if analysis["aborted"]:
            self.abort_canary(version, stable, analysis["aborted"], evidence, out)
            raise PromotionError(
                f"canary of version {version} rolled back: {analysis['aborted']} "
                f"(report {analysis['report']}); production stays on version {stable}"
            )
        self.target.set_weights(PROD, {"stable": 100})
        self.registry.set_tag(version, PASSED_TAG["canary"], "true")
        self.registry.set_tag(version, PASSED_AGAINST_TAG, str(stable))
        self.registry.set_tag(version, "mlrelease.canary_report", str(analysis["report"]))
        self.note(
            AuditRecord(
                "canary-passed",
                PROD,
                self.by,
                to_version=version,
                from_version=stable,
                alias="canary",
                weights={"stable": 100},
                evidence=evidence,
                reason="analysis passed at every step; canary kept warm at weight 0",
            )
        )
        out.say(
            f"canary of version {version} passed (report {analysis['report']}); next: `mlrelease promote production`"
        )

    def drop_canary(self, version: str, out: Outcome | None = None) -> None:
        """Weight 0, canary slot stopped, alias removed, canary pass withdrawn (each a no-op when already so).

        Stable is restarted first if it died: nginx then sends its share to the canary as the backup, so a
        canary dropped without it would keep all of production's traffic."""
        self._route_all(PROD, "stable", out or Outcome())
        self.target.stop(PROD, "canary")
        self.registry.delete_alias("canary")
        self.registry.set_tag(version, PASSED_TAG["canary"], "false")

    def abort_canary(
        self, version: str, stable: str, reason: str, evidence: dict[str, Any], out: Outcome | None = None
    ) -> None:
        """The canary dropped, the reason recorded."""
        try:
            self.drop_canary(version, out)
        except DeploymentError as exc:  # stable cannot take the traffic back: say why the canary was stopped too
            raise DeploymentError(
                f"canary of version {version} failed ({reason}) and could not be dropped: {exc}"
            ) from exc
        self._note_canary_rollback(version, stable, reason, evidence)

    def _note_canary_rollback(
        self, version: str, stable: str, reason: str, evidence: dict[str, Any] | None = None
    ) -> None:
        """The audit record of a canary stopped, all traffic on stable."""
        self.note(
            AuditRecord(
                "canary-rollback",
                PROD,
                self.by,
                to_version=stable,
                from_version=version,
                alias="canary",
                weights={"stable": 100},
                outcome="rolled back",
                reason=reason,
                evidence=evidence or {},
            )
        )

    # ----- production ------------------------------------------------------------------------------------------
    def promote_production(self, version: str | None, force: bool, reason: str | None) -> Outcome:
        """Switch the stable slot to a version that passed canary; keep the previous one warm for rollbacks."""
        out = Outcome()
        if force and not (reason and reason.strip()):
            raise PromotionError("--force needs --reason: say why the canary is skipped", exit_code=2)
        self.refuse_while_running("promote production")
        serving = self.registry.alias(PROD)
        waiting = version is not None or self.registry.alias("canary") is not None
        staged = self.registry.alias(STAGING)  # a staged version that has not passed canary is work left to do
        settled = serving is not None and staged in (None, serving)
        if not waiting and settled and self.target.slot_version(PROD, "stable") == serving:
            out.say(f"production already serves version {serving} and no canary waits; nothing to do")
            return out
        version = self.require_version(
            version,
            "canary",
            "run `mlrelease promote canary` first, or name the version with --version "
            "(a first release: --version V --force --reason TEXT)",
        )
        if serving == version and self.target.slot_version(PROD, "stable") == version:
            out.say(f"production already serves version {version}; nothing to do")
            return out
        tags = self.registry.tags(version)
        serving_now = self.target.slot_version(PROD, "stable")
        stale = None if serving_now == version else _stale_pass(tags, serving_now)
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
        if self.dry_run:
            previous = self.target.slot_version(PROD, "stable")
            kept = f"version {previous} kept warm {self.params.rollback_window:g} s" if previous else "a first release"
            out.say(f"would switch production stable to version {version} ({kept})")
            return out
        # journaled with its reason and the version it replaces: recovery audits it as this command would have
        replaces = None if serving_now == version else serving_now  # same version: recovery only finishes it
        with self.operation("promote production", version, out, reason=reason, from_version=replaces):
            self._switch_production(version, passed, reason, out)
        return out

    def _switch_production(self, version: str, passed: bool, reason: str | None, out: Outcome) -> None:
        previous = self.target.slot_version(PROD, "stable")
        if previous == version and self.registry.alias(PROD) == version:  # recovery just finished this very release
            out.say(f"production already serves version {version}; nothing more to do")
            return
        if previous != version:
            if self.target.slot_version(PROD, "canary") != version:
                self.deploy_new(PROD, "canary", self.bundle(version), version)
            if previous is None:
                self.target.rename(PROD, "canary", "stable")
                self.target.set_weights(PROD, {"stable": 100})
            else:
                self.target.set_weights(PROD, {"canary": 100})
                self.target.rename(PROD, "stable", "previous", expires_at=time.time() + self.params.rollback_window)
                self.target.rename(PROD, "canary", "stable")
        self._finish_production(version, previous, passed, reason)
        out.say(f"production: version {version} takes 100% of traffic on {self.target.entry_url(PROD)}")
        if previous and previous != version:
            out.say(
                f"previous version {previous} kept warm for {self.params.rollback_window:g} s "
                "(scripts/rollback.sh switches back to it)"
            )

    def _finish_production(self, version: str, previous: str | None, passed: bool, reason: str | None) -> None:
        state = self.journal.load()
        if state.production_history[-1:] != [version]:  # once, even when recovery finishes an interrupted run
            state.production_history.append(version)
        state.last_rollback = None
        self.journal.save(state)
        self.registry.set_alias(PROD, version)
        self.registry.delete_alias("canary")
        tags = self.registry.tags(version)
        self.note(
            AuditRecord(
                "promote",
                PROD,
                self.by,
                to_version=version,
                from_version=previous,
                alias=PROD,
                weights={"stable": 100},
                reason=reason or "passed canary",
                outcome="done" if passed else "forced",
                evidence={"canary_report": tags.get("mlrelease.canary_report")},
            )
        )

    # ----- rollback --------------------------------------------------------------------------------------------
    def rollback(self, to: str | None, reason: str | None) -> Outcome:
        """Incident path: no analysis; all production traffic back on the previous (or given) version. Registry
        calls give up within seconds: traffic moves whether or not the registry answers."""
        with brief_requests():
            return run_rollback(self, to, reason or "incident rollback")


def smoke_test(url: str, bundle_dir: Path, rows: int = 8, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Ready, then a prediction whose classes and probabilities match the card; raise PromotionError if not.

    ``headers`` carry the API key when the slot requires one (``Settings.prediction_headers``)."""
    import httpx

    from deploy.targets.traffic import predict_path, sample_rows

    card = ModelCard.read(bundle_dir)
    try:
        ready = httpx.get(f"{url}/ready", timeout=5).status_code
    except httpx.HTTPError as exc:
        raise PromotionError(f"smoke test: {url}/ready did not answer: {exc}") from exc
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


def wait_identity(target: DeploymentTarget, environment: str, slot: str, timeout: float = 5.0) -> bool:
    """Wait until the slot is ready and answers as its own version and bundle (not just anything on its port)."""
    deadline = time.monotonic() + timeout
    while True:
        if target.slot_problem(environment, slot) is None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def previous_version(state: DeployState, current: str, warm: str | None) -> str | None:
    """The version to roll back to: the warm previous slot's, else the last other production version."""
    if warm is not None and warm != current:
        return warm
    skip = {current} | ({state.last_rollback.from_version} if state.last_rollback else set())
    return next((v for v in reversed(state.production_history) if v not in skip), None)


def active_canary(p: Promoter) -> str | None:
    """The version of a canary that holds production traffic or is running (or was killed mid-way); else None."""
    op = p.journal.load().operation
    running = op is not None and op.command == "promote canary"
    if p.target.weights(PROD).get("canary", 0) > 0 or running:
        return p.target.slot_version(PROD, "canary") or (op.version if running and op is not None else None)
    return None


def _rollback_goal(
    p: Promoter, to: str | None, out: Outcome, canary: str | None = None
) -> tuple[str | None, str | None]:
    """(version serving now, version to go back to); goal None means production needs no move, and says why.

    With a canary running there is always something to do (stop it), so "no previous version" is no error then.
    """
    warm = {p.target.slot_version(PROD, slot) for slot in ("stable", "previous", "canary")}
    if to is not None and to not in warm:  # a warm version needs no registry (which may be the incident)
        p.registry.require_registered(to)
    state = p.journal.load()
    current = p.target.slot(PROD, "stable")
    if current is None:
        raise PromotionError(
            "production serves nothing, so there is nothing to roll back. Next: "
            "`mlrelease status`; deploy with `mlrelease promote production`",
            exit_code=2,
        )
    mark = state.last_rollback
    done = "nothing to do" if canary is None else f"production needs no move, only the canary of version {canary}"
    if to is None and mark is not None and mark.to_version == current.version:
        out.say(f"already rolled back from version {mark.from_version} to {mark.to_version}; {done}")
        return current.version, None
    goal = to or previous_version(state, current.version, p.target.slot_version(PROD, "previous"))
    if goal is None and canary is not None:
        out.say(f"no previous production version to go back to; production stays on version {current.version}")
        return current.version, None
    if goal is None:
        raise PromotionError("no previous production version is known; pass --to VERSION", exit_code=2)
    if goal == current.version:
        out.say(f"production already serves version {goal}; {done}")
        return current.version, None
    return current.version, goal


def _rollback_plan(
    p: Promoter, to: str | None, out: Outcome, interrupted: Operation | None, canary: str | None = None
) -> tuple[str, str] | None:
    """(version to leave, version to go back to), None when there is nothing to do.

    A journaled rollback (interrupted, or this command's own fast path) is finished toward its own goal, whatever
    intermediate state it left behind.
    """
    if interrupted is not None and interrupted.command == "rollback" and interrupted.from_version:
        if to is not None and to != interrupted.version:
            raise PromotionError(
                f"a rollback to version {interrupted.version} is unfinished; run "
                f"`scripts/rollback.sh` without --to to finish it first, then --to {to}",
                exit_code=2,
            )
        if interrupted.pid != os.getpid():
            out.say(
                f"finishing the interrupted rollback from version {interrupted.from_version} "
                f"to {interrupted.version} (pid {interrupted.pid}, by {interrupted.by})"
            )
        return interrupted.from_version, interrupted.version
    current, goal = _rollback_goal(p, to, out, canary)
    return None if goal is None else (str(current), goal)


def run_rollback(p: Promoter, to: str | None, reason: str) -> Outcome:
    """Move production back without analysis; idempotent, resumable after a crash; verifies afterwards."""
    out = Outcome()
    if p.dry_run:
        return _preview_rollback(p, to, out)
    abort = AbortRequest(p.state_dir / ABORT_FILE)
    try:
        return _rollback(p, to, reason, out, abort)
    except PromotionLocked:
        abort.made = False  # the request stays: the promotion holding the lock stops at its next check
        raise
    finally:
        abort.withdraw()


@dataclass
class AbortRequest:
    """A rollback's request that the promotion holding the lock stop (a file that promotion checks): made only
    just before this rollback waits for the lock, so a rollback with nothing to do never stops a promotion nor
    removes another's request. Withdrawn once it holds the lock (a rollback waiting on the same request then waits
    behind a rollback, which never checks it) or when it ends; kept when it gave up waiting."""

    path: Path
    made: bool = False

    def make(self) -> None:
        if self.path.parent.is_dir():  # no state folder: nothing runs
            self.path.touch()
            self.made = True

    def withdraw(self) -> None:
        if self.made:
            self.path.unlink(missing_ok=True)
            self.made = False


def _preview_rollback(p: Promoter, to: str | None, out: Outcome) -> Outcome:
    """What ``run_rollback`` would do, changing nothing."""
    dead = _dead_promotion(p)
    if dead is not None and _preview_recovery(p, dead, to, out):
        return out
    canary = None if dead is not None else active_canary(p)  # recovery stops a dead promotion's canary
    plan = _rollback_plan(p, to, out, p.journal.load().operation, canary)
    if plan is None and canary is None:
        return verify_production(p, str(p.target.slot_version(PROD, "stable")), out)
    out.say(
        f"would move all production traffic from version {plan[0]} to {plan[1]}, canary weight 0"
        if plan is not None
        else f"would stop the canary of version {canary}; production stays on its stable version"
    )
    return out


def _rollback(p: Promoter, to: str | None, reason: str, out: Outcome, abort: AbortRequest) -> Outcome:
    """The rollback itself, its abort request made: recover a dead promotion, plan, then switch under the lock."""
    restored = _recover_dead_promotion(p, to, reason, out, abort)
    if restored is not None and to in (None, restored):
        out.say("undoing the interrupted promotion put production back on its previous version: nothing more to do")
        return verify_production(p, restored, out)
    canary = active_canary(p)
    plan = _rollback_plan(p, to, out, p.journal.load().operation, canary)
    if plan is None and canary is None:
        return verify_production(p, str(p.target.slot_version(PROD, "stable")), out)
    goal = plan[1] if plan is not None else str(canary)
    abort.make()
    with p.operation("rollback", goal, out, wait_s=p.params.rollback_lock_wait, reconcile=False) as pending:
        abort.withdraw()
        decided = _rollback_plan(p, to, Outcome(), pending, canary)  # decide again under the lock, then journal
        if decided is None:
            _clear_canary(p, canary, reason, out)
            return verify_production(p, str(p.target.slot_version(PROD, "stable")), out)
        if decided != plan and pending is None:
            raise PromotionError(
                "production changed while this rollback waited for the lock (it planned "
                f"{' -> '.join(plan) if plan else 'to stop the canary'}, now it would move "
                f"{decided[0]} -> {decided[1]}); "
                "nothing was changed. Check `mlrelease status`, then run scripts/rollback.sh "
                "again, or with --to VERSION",
                exit_code=2,
            )
        reason = pending.reason if pending is not None and pending.reason else reason
        resumed = pending if pending is not None and pending.pid != os.getpid() else None
        p._journal(
            Operation(
                command="rollback",
                version=decided[1],
                pid=os.getpid(),
                by=resumed.by if resumed is not None else p.by,  # who started it, however many runs finish it
                started_at=resumed.started_at if resumed is not None else time.time(),
                from_version=decided[0],
                reason=reason,
            )
        )
        return _switch_back(p, decided[0], decided[1], reason, out, resumed)


def _stale_pass(tags: dict[str, str], serving: str | None) -> str | None:
    """What a canary pass was measured against when production has changed since (a rollback, a forced release):
    a pass compares the version with one stable version and says nothing about another. None when it still holds
    (or predates the tag)."""
    against = tags.get(PASSED_AGAINST_TAG)
    if tags.get(PASSED_TAG["canary"]) != "true" or against is None or serving is None or against == serving:
        return None
    return f"version {against}, but production now serves version {serving}"


def _withdraw_undone(p: Promoter, version: str, stable: str, reason: str, out: Outcome) -> None:
    """The version an incident's rollback found serving from an interrupted promotion, undone by recovery: tagged
    rolled back, its canary pass and alias withdrawn, as for any version a rollback moves production away from
    (else the next `promote production` would put it back), the rollback marked (a second run then says "already
    rolled back" instead of moving on to an older version) and recorded with the on-call's reason."""
    state = p.journal.load()
    state.last_rollback = RollbackMark(from_version=version, to_version=stable, at=time.time())
    p.journal.save(state)
    outcome = "done"
    try:
        p.registry.delete_alias("canary", only=version)
        p.registry.set_tag(version, ROLLED_BACK_TAG, reason[:500])
        p.registry.set_tag(version, PASSED_TAG["canary"], "false")
        out.say(f"version {version} tagged rolled_back, its canary pass withdrawn")
    except Exception as exc:
        if not is_registry_error(exc):
            raise
        out.exit_code = 1
        outcome = "registry not updated"
        out.say(
            f"NOT DONE: the registry did not answer ({exc}), so version {version} keeps its canary pass and is not "
            "tagged rolled back: do not `mlrelease promote production` it; canary it again once the registry answers"
        )
    undid = {"undid": "an interrupted `promote production` that served it"}
    _note_rollback(p, version, stable, reason, outcome=outcome, evidence=undid)


def _serving_version(p: Promoter) -> str | None:
    """The version holding most of production's traffic (stable's when no weights are written): the one an incident
    is about. A `promote production` killed after its switch serves the new version from the canary slot while the
    stable slot still holds the old one, so the stable slot alone does not say what was serving."""
    weights = p.target.weights(PROD)
    slot = max(weights, key=lambda name: weights[name]) if weights else "stable"
    return p.target.slot_version(PROD, slot)


def _dead_promotion(p: Promoter) -> Operation | None:
    """The journaled promotion whose process is gone (killed mid-way), else None."""
    from deploy.targets.local import pid_alive

    op = p.journal.load().operation
    return None if op is None or op.command == "rollback" or pid_alive(op.pid) else op


def _recover_dead_promotion(p: Promoter, to: str | None, reason: str, out: Outcome, abort: AbortRequest) -> str | None:
    """A promotion killed mid-way is undone under the lock before the rollback plans: its half-done state (no
    stable slot, say) is no base for a plan. When undoing it took traffic off the version that served, that version
    is withdrawn under the same lock. Returns the version production is back on then, else None. Another command may
    recover it while this one waits: a rollback run has then withdrawn the version too (this one finds it rolled
    back), any other command has not, and this one withdraws it."""
    op = _dead_promotion(p)
    if op is None:
        return None
    before = _serving_version(p)  # read again under the lock when nobody recovered it meanwhile
    abort.make()  # another command may have recovered it and hold the lock now
    with promotion_lock(p.state_dir, "rollback", p.by, wait_s=p.params.rollback_lock_wait):
        abort.withdraw()
        state = p.journal.load()
        if state.operation == op:
            before = _serving_version(p)
            p.recover(out, resume_rollback=True)  # traffic back on stable (or the switch finished), journal cleared
        elif state.operation is not None or _withdrawn_since(state.last_rollback, before, op):
            return None  # a rollback is journaled (the main path finishes it), or one already withdrew the version
        after = _serving_version(p)
        if before is None or after is None or after == before or to == before:
            return None
        _withdraw_undone(p, before, after, reason, out)
    return after


def _withdrawn_since(mark: RollbackMark | None, version: str | None, op: Operation) -> bool:
    """A rollback withdrew ``version`` after ``op`` started (so, from the very promotion ``op`` journaled)."""
    return mark is not None and mark.from_version == version and mark.at >= op.started_at


def _preview_recovery(p: Promoter, op: Operation, to: str | None, out: Outcome) -> bool:
    """A dry run with a dead promotion journaled: say what recovering it first would do. True when the real run
    stops there (the preview is complete); False when production stays on the version serving now, so the plan
    from the current state holds."""
    out.say(f"would first recover the interrupted `{op.command}` of version {op.version} (pid {op.pid} is gone)")
    serving = _serving_version(p)
    back_on = p.target.slot_version(PROD, "stable") or p.target.slot_version(PROD, "previous")
    if serving is None or back_on is None or serving == back_on:
        return False
    withdrawn = "" if to == serving else f" and withdraw version {serving} as rolled back"
    out.say(f"undoing it would put production back on version {back_on}{withdrawn}")
    out.say(
        "nothing more to do after that"
        if to in (None, back_on)
        else f"then would move all production traffic from version {back_on} to {to}"
    )
    return True


def _clear_canary(p: Promoter, version: str | None, reason: str, out: Outcome) -> None:
    """Production needs no move, but a canary ran: by now it stopped itself (it saw the abort request) or recovery
    undid a dead one; make sure no traffic, process or alias is left, and record who stopped it and why."""
    if version is None:
        return
    p.drop_canary(version, out)
    stable = _note_canary_stopped(p, version, reason)
    out.say(f"canary of version {version} stopped: all production traffic on version {stable}")


def _route_to(p: Promoter, goal: str, out: Outcome) -> tuple[bool, str]:
    """All production traffic on ``goal``; returns (it was warm, the slot that serves it now)."""
    weights = p.target.weights(PROD)
    where = next((s for s in ("stable", "previous", "canary") if p.target.slot_version(PROD, s) == goal), None)
    ready = where is not None and wait_identity(p.target, PROD, where, 1.0)
    if where is not None and not ready and p.target.starting(PROD, where):  # a restart under way (an interrupted
        deadline = time.monotonic() + p.params.ready_timeout  # reconcile): sooner than a cold start
        while p.target.starting(PROD, where) and time.monotonic() < deadline:
            time.sleep(0.1)
        ready = wait_identity(p.target, PROD, where, 1.0)
    if where is not None and not ready and weights.get(where, 0) > 0:
        p.revive(PROD, where, out, then="run scripts/rollback.sh again")  # it holds traffic: never replaced
        ready = True
    if where is not None and ready:
        # always: a run killed between writing the weights and nginx's reload left the state ahead of the router
        # (the router's applied-config stamp makes this a no-op when nginx already routes so)
        p.target.set_weights(PROD, {where: 100})
        return True, where
    spare = where if where in ("previous", "canary") else "canary"  # goal's own dead slot, else the canary's
    _cold_start(p, goal, spare, out)
    p.target.set_weights(PROD, {spare: 100})
    return False, spare


def _cold_start(p: Promoter, goal: str, slot: str, out: Outcome) -> None:
    """Start ``goal`` in ``slot`` (the canary's, which the rollback stops anyway), so that a warm previous version
    stays warm whether ``goal`` starts or not; PromotionError, nothing moved, when it cannot start."""
    if p.target.weights(PROD).get(slot, 0) > 0:
        raise DeploymentError(
            f"{PROD}/{slot} (version {p.target.slot_version(PROD, slot)}) holds traffic, so version {goal} "
            "cannot be started in its place; run scripts/rollback.sh without --to first"
        )
    out.say(f"version {goal} is not warm: starting it (slower than the warm path)")
    try:
        bundle = p.bundle(goal)  # fetched and verified before anything is stopped
    except Exception as exc:  # a PromotionError ends the rollback unjournaled: nothing moved, nothing to finish
        if not (is_registry_error(exc) or type(exc).__module__.startswith("requests")):  # requests: artifact proxy
            raise
        serving = p.target.slot_version(PROD, "stable")
        if is_not_found(exc):
            raise PromotionError(
                f"version {goal} is not warm and not in the registry ({exc}), so no traffic moved: production stays on "
                f"version {serving}. Next: scripts/rollback.sh --to a registered version",
                exit_code=2,
            ) from exc
        raise PromotionError(
            f"version {goal} is not warm and its bundle could not be fetched from the registry ({exc}), so no "
            f"traffic moved: production stays on version {serving}. Next: run "
            "scripts/rollback.sh again once the registry answers, or --to a version that is warm "
            "(`mlrelease status`)"
        ) from exc
    replaced = p.target.slot_version(PROD, slot) if slot == "canary" else None
    p.target.stop(PROD, slot)
    try:
        p.target.deploy(PROD, slot, bundle, goal)
    except DeploymentError as exc:  # no traffic moved: end this rollback (a PromotionError clears its journal)
        stopped = replaced if replaced is not None and replaced != goal else None
        forgot = stopped is not None and _forget_stopped_canary(p, stopped, goal)
        raise PromotionError(_cold_start_failed(p, goal, exc, stopped, forgot)) from exc


def _forget_stopped_canary(p: Promoter, version: str, goal: str) -> bool:
    """The canary stopped for a cold start that failed: its alias goes too (no alias names a canary that nothing
    serves, as after a rollback that succeeds), and the audit log says why it stopped. False if that failed."""
    try:
        p.registry.delete_alias("canary")
        _note_canary_stopped(p, version, f"its slot was taken to start version {goal} for a rollback, which failed")
    except Exception:  # never in place of the error the on-call engineer needs to read
        log.exception("removing the alias of the stopped canary (version %s) failed", version)
        return False
    return True


def _note_canary_stopped(p: Promoter, version: str, reason: str) -> str | None:
    """The audit record of a canary stopped by a rollback: all production traffic on stable, and why; returns the
    stable version it names."""
    stable = p.target.slot_version(PROD, "stable")
    _note_rollback(p, version, stable, reason, alias="canary", outcome="canary stopped")
    return stable


def _note_rollback(p: Promoter, away: str, to: str | None, reason: str, by: str | None = None, **fields: Any) -> None:
    """The audit record of production moved off ``away`` to ``to`` by a rollback, all traffic on stable (``by``:
    who started it, when not this run)."""
    record = AuditRecord(
        "rollback", PROD, by or p.by, to_version=to, from_version=away, weights={"stable": 100}, reason=reason, **fields
    )
    p.note(record)


def _cold_start_failed(p: Promoter, goal: str, exc: DeploymentError, stopped: str | None, alias_removed: bool) -> str:
    """What an on-call engineer reads when the version to roll back to cannot start: nothing moved, and what next
    (``stopped``: the waiting canary's version, stopped to make room)."""
    serving = p.target.slot_version(PROD, "stable")
    warm = p.target.slot_version(PROD, "previous")
    if warm is not None and warm not in (serving, goal) and wait_identity(p.target, PROD, "previous", 1.0):
        then = f"version {warm} is still warm: run scripts/rollback.sh --to {warm} to move to it in about a second"
    else:
        then = f"run scripts/rollback.sh again to retry version {goal}"
    canary = ""
    if stopped is not None:
        alias = "and its alias removed" if alias_removed else "but its alias could not be removed (see the log)"
        canary = f" The canary of version {stopped}, waiting at weight 0, was stopped to make room for it, {alias}."
    return (
        f"version {goal} could not be started, so no traffic moved: production stays on version {serving}. "
        f"{exc}.{canary} Next: {then}, or with --to another version"
    )


def _switch_back(
    p: Promoter, bad: str, goal: str, reason: str, out: Outcome, resumed: Operation | None = None
) -> Outcome:
    """Every step checks the state first, so a re-run after a crash at any point finishes the same rollback.
    ``resumed``: the journal of an earlier run that started it (its actor and time go on the audit record)."""
    started = time.monotonic()
    was_warm, slot = _route_to(p, goal, out)
    switch_s = time.monotonic() - started
    since_command = time.time() - process_started()
    fast = switched_to(goal)
    if fast is not None:
        switch_s, since_command = fast.switch_s, fast.seconds_since_command
    how = "fast path, " if fast is not None else ""
    out.say(
        f"traffic: 100% on version {goal}, {since_command:.2f} s after the command started "
        f"({how}{'warm' if was_warm else 'cold'} switch {switch_s:.3f} s); canary weight 0"
    )
    if slot != "canary":
        p.target.stop(PROD, "canary", wait=False)
    if slot != "stable":
        p.target.stop(PROD, "stable", wait=False)
        p.target.rename(PROD, slot, "stable")  # from the canary's slot, a warm previous version stays warm
    state = p.journal.load()
    state.last_rollback = RollbackMark(from_version=bad, to_version=goal, at=time.time())
    if state.production_history[-1:] != [goal]:
        state.production_history.append(goal)
    p.journal.save(state)
    verify_production(p, goal, out)
    try:
        p.registry.set_alias(PROD, goal)
        canary_alias = p.registry.delete_alias("canary")
        p.registry.set_tag(bad, ROLLED_BACK_TAG, reason[:500])
        p.registry.set_tag(bad, PASSED_TAG["canary"], "false")  # back to production only through a new canary
    except Exception as exc:
        if not is_registry_error(exc):
            raise
        checked = "verified" if out.exit_code == 0 else "but NOT verified (see above)"
        raise RegistryBehind(
            "\n".join(
                [
                    *out.lines,
                    f"production traffic is on version {goal}, {checked}; the registry could not be updated "
                    f"({exc}), so the production alias, the rolled_back tag on version {bad} and the history entry "
                    "are still to do. Run scripts/rollback.sh again once the registry answers: it finishes only "
                    "these steps (other commands wait for it)",
                ]
            )
        ) from exc
    _note_rollback(
        p,
        bad,
        goal,
        reason,
        by=resumed.by if resumed is not None else None,  # the traffic moved on their command
        alias=PROD,
        evidence=_rollback_evidence(p, resumed, switch_s, was_warm, fast is not None, since_command),
        at=resumed.started_at if resumed is not None else time.time(),
    )
    removed = f"; alias canary (version {canary_alias}) removed" if canary_alias is not None else ""
    out.say(f"alias production -> {goal}{removed}; version {bad} stopped and tagged rolled_back")
    return out


def _rollback_evidence(
    p: Promoter, resumed: Operation | None, switch_s: float, warm: bool, fast: bool, since_command: float
) -> dict[str, Any]:
    """The rollback record's evidence; a rollback finished by a later run says so and by whom (its timings are
    that run's, not those of the run that started it)."""
    evidence: dict[str, Any] = {
        "switch_seconds": round(switch_s, 4),
        "warm": warm,
        "fast_path": fast,
        "seconds_since_command": round(since_command, 3),
    }
    if resumed is not None:
        evidence.update(finished_by=p.by, finished_at=round(time.time(), 3), previous_run_pid=resumed.pid)
    return evidence


def verify_production(p: Promoter, version: str, out: Outcome) -> Outcome:
    """/ready of the stable slot and one prediction through the router, answered by ``version``."""
    import httpx

    from deploy.targets.traffic import predict_path, sample_rows

    slot, entry = p.target.slot(PROD, "stable"), p.target.entry_url(PROD)
    if slot is None or entry is None or not wait_identity(p.target, PROD, "stable", 5.0):
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

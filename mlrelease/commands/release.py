"""Release commands: ``promote staging|canary|production``, ``status``, ``history`` and ``rollback``."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mlrelease.commands.common import PARAMS, project_settings
from mlrelease.commands.status import status_command

if TYPE_CHECKING:
    from mlrelease.core.params import Params
    from release.outcome import Outcome
    from release.promoter import Promoter


class Stage(StrEnum):
    staging = "staging"
    canary = "canary"
    production = "production"


BY = typer.Option(None, "--by", help="Who acts (default: MLRELEASE_BY, GITHUB_ACTOR, git user.email, OS user)")
DRY = typer.Option(False, "--dry-run", help="Say what would happen; change nothing")


def build_promoter(params_path: Path, by: str | None, dry_run: bool, loadtest: bool = False) -> Promoter:
    """Wire settings, params, the target (MLRELEASE_TARGET), the registry and the actor into a Promoter."""
    from deploy.targets import make_target
    from mlrelease.core.params import CanaryParams, PromotionParams, load_params, section
    from mlrelease.core.settings import get_settings
    from registry.versions import Registry
    from release.audit import resolve_actor
    from release.promoter import Promoter

    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = get_settings()
    params = load_params(params_path)
    promotion = section(params, "promotion", PromotionParams)
    target = make_target(
        settings.state_dir,
        settings.target,
        ready_timeout_s=promotion.ready_timeout,
        drain_timeout_s=promotion.drain_timeout,
        replicas={"production": promotion.replicas},
        metrics_headers=settings.prediction_headers() if settings.protect_metadata else None,
    )
    return Promoter(
        settings=settings,
        model_name=params.model.name,
        canary_params=section(params, "canary", CanaryParams),
        params=promotion,
        target=target,
        registry=Registry(params.model.name, settings),
        by=resolve_actor(by),
        dry_run=dry_run,
        reports_dir=settings.home / "reports",
        target_column=params.data.target,
        loadtest=_loadtest_params(params) if loadtest else None,
    )


def _loadtest_params(params: Params) -> object:
    """The serving engineer's load-test section (imported only for the staging gate: it pulls in httpx)."""
    from deploy.loadtest.runner import LoadtestParams
    from mlrelease.core.params import section

    return section(params, "loadtest", LoadtestParams)


def finish(outcome: Outcome, title: str) -> None:
    """Print what the command did and exit with its code."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    console.print(f"[bold]{title}[/bold]")
    for line in outcome.lines:
        console.print(f"  {line}", highlight=False)
    raise typer.Exit(outcome.exit_code)


def run_guarded(action: str, call: Callable[[], None]) -> None:
    """Run a promotion call; turn known errors into one clear message and a non-zero exit code."""
    from rich.console import Console

    from deploy.targets.base import DeploymentError
    from mlrelease.core.errors import UserError, one_line
    from mlrelease.core.locking import PromotionLocked
    from mlrelease.core.params import ParamsError
    from release.outcome import PromotionError

    err = Console(stderr=True, soft_wrap=True)  # no hard line breaks: paths and ids stay copyable
    try:
        call()
    except typer.Exit:
        raise  # click's Exit is a RuntimeError: a finished command's exit code passes through untouched
    except PromotionLocked as exc:
        err.print(f"[red]{action}: {exc}[/red]", highlight=False)
        raise typer.Exit(3) from exc
    except PromotionError as exc:
        err.print(f"[red]{action} failed: {exc}[/red]", highlight=False)
        raise typer.Exit(exc.exit_code) from exc
    except (ParamsError, UserError) as exc:  # a file, setting or service the user can fix: nothing changed
        err.print(f"[red]{action}: {one_line(exc)}[/red]", highlight=False)
        raise typer.Exit(getattr(exc, "exit_code", 2)) from exc
    except (DeploymentError, ValueError, RuntimeError, OSError) as exc:
        err.print(f"[red]{action} failed: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    except Exception as exc:
        from registry.client import is_registry_error

        if not is_registry_error(exc):
            raise
        err.print(
            f"[red]{action} failed: the registry refused or could not be reached: {exc}. "
            "Check MLFLOW_TRACKING_URI, then re-run the command.[/red]",
            highlight=False,
        )
        raise typer.Exit(1) from exc


def _steps(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--steps {text!r}: use comma-separated percentages, e.g. 5,25,50") from exc


def promote_command(
    stage: Stage = typer.Argument(..., help="staging, canary or production"),
    version: str | None = typer.Option(
        None,
        "--version",
        help="staging, production: the version (default: the alias one step back); canary takes staging's",
    ),
    steps: str | None = typer.Option(None, "--steps", help="Canary weights in percent, e.g. 5,25,50"),
    interval: str | None = typer.Option(None, "--interval", help="Canary analysis interval, e.g. 30s"),
    force: bool = typer.Option(
        False,
        "--force",
        help="production: skip the canary requirement; canary: a version once rolled back; staging: an image that "
        "has not passed `mlrelease scan` (only with promotion.require_scanned_image on); recorded as forced",
    ),
    reason: str | None = typer.Option(None, "--reason", help="Why (required with --force; recorded)"),
    by: str | None = BY,
    dry_run: bool = DRY,
    params: Path = PARAMS,
) -> None:
    """Move a version one step: candidate -> staging -> canary -> production, gated and audited."""
    from mlrelease.core.params import parse_duration

    def call() -> None:
        p = build_promoter(params, by, dry_run, loadtest=stage is Stage.staging)
        if stage is Stage.staging:
            finish(p.promote_staging(version, force, reason), f"promote staging{' (dry run)' if dry_run else ''}")
        elif stage is Stage.canary:
            try:
                secs = parse_duration(interval) if interval else None
            except ValueError as exc:  # a usage error like any other bad option: exit 2
                raise typer.BadParameter(str(exc), param_hint="--interval") from exc
            finish(  # a --version is refused there, once a dead promotion is recovered
                p.promote_canary(_steps(steps), secs, force, reason, version or None),
                f"promote canary{' (dry run)' if dry_run else ''}",
            )
        else:
            finish(p.promote_production(version, force, reason), f"promote production{' (dry run)' if dry_run else ''}")

    run_guarded(f"promote {stage.value}", call)


def rollback_command(
    ctx: typer.Context,
    to: str | None = typer.Option(None, "--to", help="Version to go back to (default: previous production)"),
    reason: str | None = typer.Option(None, "--reason", help="Why (recorded in the audit trail)"),
    by: str | None = BY,
    dry_run: bool = DRY,
    params: Path = PARAMS,
) -> None:
    """Incident rollback: skip analysis, all production traffic to the previous version, verify it.

    Runbook: docs/rollback.md (exit codes, what each line means, finishing an interrupted rollback).
    """
    started = time.monotonic()

    def call() -> None:
        fast = ctx.obj if not dry_run else None  # what scripts/rollback.sh's fast path did (rollback_main)
        outcome = build_promoter(params, by, dry_run).rollback(to, reason, fast)
        outcome.say(f"took {time.monotonic() - started:.2f} s in total")
        finish(outcome, f"rollback{' (dry run)' if dry_run else ''}")

    run_guarded("rollback", call)


def reconcile_command(by: str | None = BY, params: Path = PARAMS) -> None:
    """Restart what the supervisor gave up on, stop expired warm slots, make each router match the state (every
    command does it first; this does only that, e.g. after `mlrelease status` shows a replica down)."""
    from release.outcome import Outcome
    from release.states import Command

    def call() -> None:
        p = build_promoter(params, by, dry_run=False)
        out = Outcome()
        with p.operation(Command.RECONCILE, "-", out):
            pass  # recovery of a crashed promotion and the reconcile itself happen on entering
        if not out.lines:
            out.say("nothing to do: every slot runs and every router matches the state")
        finish(out, "reconcile")

    run_guarded("reconcile", call)


def down_command(
    yes: bool = typer.Option(False, "--yes", help="Also when production serves traffic"),
    by: str | None = BY,
) -> None:
    """Stop every local server and router of this workspace; the registry, its aliases and the history stay
    (the teardown of the embedded default: `make clean` runs it first). Promoting a version again starts it."""
    from deploy.targets import make_target
    from release.audit import resolve_actor
    from release.teardown import stop_everything

    def call() -> None:
        settings = project_settings()
        target = make_target(settings.state_dir, settings.target)
        finish(stop_everything(settings.state_dir, target, yes, resolve_actor(by)), "down")

    run_guarded("down", call)


def history_command(
    limit: int = typer.Option(50, "--limit", help="Most recent records to show"),
    evidence: bool = typer.Option(False, "--evidence", help="Add a column with each record's evidence, in short"),
    as_json: bool = typer.Option(False, "--json", help="The records as JSON lines, evidence in full"),
) -> None:
    """The audit trail: every alias and traffic change, who, when, from which version to which, why."""
    from release.audit import AuditLog
    from release.teardown import in_progress

    state_dir = project_settings().state_dir
    records = AuditLog(state_dir).records()[-limit:]
    if as_json:
        for r in records:
            typer.echo(json.dumps(r, sort_keys=True, default=str))
        return
    print_history(records, evidence)
    running = in_progress(state_dir)
    if running:
        typer.echo(running)


def register(app: typer.Typer) -> None:
    """Add the release commands to the CLI."""
    app.command("promote")(promote_command)
    app.command("rollback")(rollback_command)
    app.command("reconcile")(reconcile_command)
    app.command("down")(down_command)
    app.command("status")(status_command)
    app.command("history")(history_command)


def print_history(records: list[dict[str, Any]], evidence: bool) -> None:
    """The audit records as a table, as wide as the terminal (wide when the output is not one: a CI log)."""
    from rich.console import Console
    from rich.table import Table

    from registry.image import short_digest

    table = Table(title="mlrelease history")
    columns = ["when (UTC)", "by", "action", "env", "alias", "from", "to", "image", "weights", "outcome", "reason"]
    for col in columns + (["evidence"] if evidence else []):
        table.add_column(col, overflow="fold")
    for r in records:
        weights = ",".join(f"{k}={v:g}" for k, v in (r.get("weights") or {}).items())
        row = [r.get("when", ""), r.get("by", ""), r.get("action", ""), r.get("environment", "")]
        row += [r.get("alias") or "", r.get("from_version") or "", r.get("to_version") or ""]
        row += [short_digest(r.get("image_digest")), weights, r.get("outcome", ""), r.get("reason", "")]
        table.add_row(*row, *([short_evidence(r.get("evidence") or {})] if evidence else []))
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)


def short_evidence(evidence: dict[str, Any], width: int = 240) -> str:
    """key=value for plain values, key=[N items] or key={...} for nested ones, cut at ``width``."""
    parts = []
    for key, value in evidence.items():
        if isinstance(value, list):
            parts.append(f"{key}=[{len(value)} items]")
        elif isinstance(value, dict):
            parts.append(f"{key}={{{', '.join(map(str, value))}}}")
        else:
            parts.append(f"{key}={value}")
    text = "; ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def _release_app() -> typer.Typer:
    app = typer.Typer(
        name="mlrelease",
        pretty_exceptions_enable=False,
        add_completion=False,
        help="mlrelease release commands: promote, status, history, rollback.",
    )
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    register(app)
    return app


def main() -> None:
    """Only the release commands (skips importing the other command groups)."""
    _release_app()()


def rollback_main(argv: list[str], fast: object = None) -> None:
    """``scripts/rollback.sh ARGS``: the rollback command alone, so usage and errors name the script; ``fast``
    (a release.fast_rollback.FastSwitch) is what its fast path already did, handed to the command as its obj."""
    group = typer.main.get_command(_release_app())  # several commands: a group (typer's own click)
    command = group.commands["rollback"]  # type: ignore[attr-defined]
    command.main(args=argv, prog_name="scripts/rollback.sh", obj=fast)


if __name__ == "__main__":
    main()

"""Release commands: ``promote staging|canary|production``, ``status``, ``history`` and ``rollback``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from mlrelease.core.params import Params
    from mlrelease.core.settings import Settings
    from registry.promotion import Outcome, Promoter


class Stage(StrEnum):
    staging = "staging"
    canary = "canary"
    production = "production"


PARAMS = typer.Option(Path("params.yaml"), "--params", help="params.yaml with canary: and promotion: sections")
BY = typer.Option(None, "--by", help="Who acts (default: MLRELEASE_BY, GITHUB_ACTOR, git user.email, OS user)")
DRY = typer.Option(False, "--dry-run", help="Say what would happen; change nothing")


def build_promoter(params_path: Path, by: str | None, dry_run: bool, loadtest: bool = False) -> Promoter:
    """Wire settings, params, the local target, the registry and the actor into a Promoter."""
    from deploy.targets.local import LocalTarget
    from mlrelease.core.params import load_params, section
    from mlrelease.core.settings import get_settings
    from registry.analysis import CanaryParams
    from registry.audit import resolve_actor
    from registry.promotion import Promoter, PromotionParams, Registry

    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = get_settings()
    params = load_params(params_path)
    promotion = section(params, "promotion", PromotionParams)
    target = LocalTarget(
        settings.state_dir, ready_timeout_s=promotion.ready_timeout, drain_timeout_s=promotion.drain_timeout
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
    from mlrelease.core.locking import PromotionLocked
    from mlrelease.core.params import ParamsError
    from registry.promotion import PromotionError

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
    except (DeploymentError, ParamsError, ValueError, RuntimeError, OSError) as exc:
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


def project_settings() -> Settings:
    """Settings of a workspace that is one (a params.yaml or deployment state is there): status and history read
    its state, and run from elsewhere they would report an empty one as if nothing were deployed."""
    from mlrelease.core.settings import get_settings

    settings = get_settings()
    if not (settings.home / "params.yaml").is_file() and not settings.state_dir.is_dir():
        typer.echo(
            f"no mlrelease project at {settings.home} (no params.yaml, no .mlrelease): run from the repository "
            "root, or set MLRELEASE_HOME to it",
            err=True,
        )
        raise typer.Exit(2)
    return settings


def stop_everything(state_dir: Path, yes: bool, by: str | None) -> None:
    """Body of `mlrelease down`: under the promotion lock, stop every slot and router, clear any journaled
    promotion (nothing is left to recover) and record who did it. An unfinished rollback is refused: stopping it
    would leave the version it was taking production away from as the one to serve again."""
    from deploy.targets.local import LocalTarget
    from mlrelease.core.locking import promotion_lock
    from registry.audit import AuditLog, AuditRecord, resolve_actor

    target = LocalTarget(state_dir)
    actor = resolve_actor(by)
    # no state, nothing to stop: no lock either, so a fresh workspace does not get a state folder
    with promotion_lock(state_dir, "down", actor) if target.store.path.is_file() else contextlib.nullcontext():
        running, state = target.status(), target.store.load()
        if not running:
            typer.echo("nothing is running: no server or router to stop")
            return
        if state.operation is not None and state.operation.command == "rollback":
            raise typer.BadParameter(
                f"a rollback from version {state.operation.from_version} to {state.operation.version} is unfinished; "
                "finish it with scripts/rollback.sh first"
            )
        serving = [r for r in running if r.environment == "production" and r.weight > 0]
        if serving and not yes:
            raise typer.BadParameter(
                f"production serves version {serving[0].version} through {target.entry_url('production')}; "
                "`mlrelease down --yes` stops it all the same"
            )
        target.stop_all()
        state = target.store.load()
        state.operation = None
        target.store.save(state)
    stopped = [f"{r.environment}/{r.slot} (version {r.version})" for r in running]
    AuditLog(state_dir).append(
        AuditRecord("down", "all", actor, outcome="stopped", reason="mlrelease down: " + ", ".join(stopped))
    )
    back = f"; `mlrelease promote production --version {serving[0].version}` serves it again" if serving else ""
    typer.echo("stopped " + ", ".join(stopped) + " and their routers" + back)


def register(app: typer.Typer) -> None:
    """Add the release commands to the CLI."""

    @app.command("promote")
    def promote(
        stage: Stage = typer.Argument(..., help="staging, canary or production"),
        version: str | None = typer.Option(
            None,
            "--version",
            help="staging, production: the version (default: the alias one step back); canary takes staging's",
        ),
        steps: str | None = typer.Option(None, "--steps", help="Canary weights in percent, e.g. 5,25,50"),
        interval: str | None = typer.Option(None, "--interval", help="Canary analysis interval, e.g. 30s"),
        force: bool = typer.Option(
            False, "--force", help="production: skip the canary requirement; canary: a version once rolled back"
        ),
        reason: str | None = typer.Option(None, "--reason", help="Why (required with --force)"),
        by: str | None = BY,
        dry_run: bool = DRY,
        params: Path = PARAMS,
    ) -> None:
        """Move a version one step: candidate -> staging -> canary -> production, gated and audited."""
        from registry.analysis import parse_duration

        def call() -> None:
            p = build_promoter(params, by, dry_run, loadtest=stage is Stage.staging)
            if stage is Stage.staging:
                finish(p.promote_staging(version), f"promote staging{' (dry run)' if dry_run else ''}")
            elif stage is Stage.canary:
                if version:
                    staged = p.registry.alias("staging")
                    raise typer.BadParameter(
                        f"canary always takes the version on staging (now {staged or 'none'}); to canary version "
                        f"{version}: `mlrelease promote staging --version {version}`, then `mlrelease promote canary`"
                    )
                try:
                    secs = parse_duration(interval) if interval else None
                except ValueError as exc:  # a usage error like any other bad option: exit 2
                    raise typer.BadParameter(str(exc), param_hint="--interval") from exc
                finish(
                    p.promote_canary(_steps(steps), secs, force, reason),
                    f"promote canary{' (dry run)' if dry_run else ''}",
                )
            else:
                finish(
                    p.promote_production(version, force, reason), f"promote production{' (dry run)' if dry_run else ''}"
                )

        run_guarded(f"promote {stage.value}", call)

    @app.command("rollback")
    def rollback(
        to: str | None = typer.Option(None, "--to", help="Version to go back to (default: previous production)"),
        reason: str | None = typer.Option(None, "--reason", help="Why (recorded in the audit trail)"),
        by: str | None = BY,
        dry_run: bool = DRY,
        params: Path = PARAMS,
    ) -> None:
        """Incident rollback: skip analysis, all production traffic to the previous version, verify it."""
        started = time.monotonic()

        def call() -> None:
            outcome = build_promoter(params, by, dry_run).rollback(to, reason)
            outcome.say(f"took {time.monotonic() - started:.2f} s in total")
            finish(outcome, f"rollback{' (dry run)' if dry_run else ''}")

        run_guarded("rollback", call)

    @app.command("reconcile")
    def reconcile(by: str | None = BY, params: Path = PARAMS) -> None:
        """Restart dead slots, stop expired warm ones, make each router match the state (every command does it
        first; this does only that, e.g. after `mlrelease status` shows a slot down)."""
        from registry.promotion import Outcome

        def call() -> None:
            p = build_promoter(params, by, dry_run=False)
            out = Outcome()
            with p.operation("reconcile", "-", out):
                pass  # recovery of a crashed promotion and the reconcile itself happen on entering
            if not out.lines:
                out.say("nothing to do: every slot runs and every router matches the state")
            finish(out, "reconcile")

        run_guarded("reconcile", call)

    @app.command("down")
    def down(
        yes: bool = typer.Option(False, "--yes", help="Also when production serves traffic"),
        by: str | None = BY,
    ) -> None:
        """Stop every local server and router of this workspace; the registry, its aliases and the history stay
        (the teardown of the embedded default: `make clean` runs it first). Promoting a version again starts it."""
        run_guarded("down", lambda: stop_everything(project_settings().state_dir, yes, by))

    @app.command("status")
    def status(params: Path = PARAMS) -> None:
        """What serves where, at which weight, healthy or not."""
        from rich.console import Console
        from rich.table import Table

        from deploy.targets.local import LocalTarget

        target = LocalTarget(project_settings().state_dir)
        table = Table(title="mlrelease deployments")
        for col in ("environment", "slot", "version", "url", "pid", "weight %", "healthy", "detail"):
            table.add_column(col)
        rows = target.status()
        for r in rows:
            table.add_row(
                r.environment,
                r.slot,
                r.version,
                r.url,
                str(r.pid or ""),
                f"{r.weight:g}",
                "[green]yes[/green]" if r.healthy else "[red]no[/red]",
                r.detail,
            )
        console = Console(width=max(Console().width, 150))
        console.print(table if rows else "nothing deployed yet (`mlrelease promote staging`)")
        entry = target.entry_url("production")
        if entry:
            console.print(f"production entry point: {entry}")
        running = in_progress(target.state_dir)
        if running:
            console.print(running, highlight=False, soft_wrap=True)
        down = [r for r in rows if r.weight > 0 and not r.healthy]
        for r in down:
            console.print(
                f"[red]{r.environment}/{r.slot} (version {r.version}) takes {r.weight:g}% of traffic and is not "
                f"healthy: {r.detail}. Next: `mlrelease reconcile` restarts it, `scripts/rollback.sh` moves traffic to "
                f"the previous version; its log is in {target.state_dir / 'logs'}[/red]",
                highlight=False,
                soft_wrap=True,
            )
        if down:
            raise typer.Exit(1)

    @app.command("history")
    def history(
        limit: int = typer.Option(50, "--limit", help="Most recent records to show"),
        evidence: bool = typer.Option(False, "--evidence", help="Add a column with each record's evidence, in short"),
        as_json: bool = typer.Option(False, "--json", help="The records as JSON lines, evidence in full"),
    ) -> None:
        """The audit trail: every alias and traffic change, who, when, from which version to which, why."""
        from registry.audit import AuditLog

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


def in_progress(state_dir: Path) -> str | None:
    """The journaled operation in a line, None when there is none. An operation's audit record is written when it
    ends, so a rollback under way (or interrupted) shows here, with what finishes it, and nowhere else."""
    from datetime import UTC, datetime

    from deploy.targets.local import pid_alive
    from deploy.targets.state import StateStore

    op = StateStore(state_dir).load().operation
    if op is None:
        return None
    since = datetime.fromtimestamp(op.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    moving = f" from version {op.from_version}" if op.from_version else ""
    if pid_alive(op.pid):
        where = f"running (pid {op.pid})"
    elif op.command == "rollback":
        where = f"interrupted (pid {op.pid} is gone): run scripts/rollback.sh to finish it"
    else:
        where = (
            f"interrupted (pid {op.pid} is gone): the next command recovers it (undone, or finished if its switch "
            "was done): `mlrelease reconcile`, or scripts/rollback.sh in an incident"
        )
    reason = f" ({op.reason})" if op.reason else ""
    return f"in progress: `{op.command}` to version {op.version}{moving} by {op.by} since {since} UTC{reason}, {where}"


def print_history(records: list[dict[str, Any]], evidence: bool) -> None:
    """The audit records as a table, as wide as the terminal (wide when the output is not one: a CI log)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mlrelease history")
    columns = ["when (UTC)", "by", "action", "env", "alias", "from", "to", "weights", "outcome", "reason"]
    for col in columns + (["evidence"] if evidence else []):
        table.add_column(col, overflow="fold")
    for r in records:
        weights = ",".join(f"{k}={v:g}" for k, v in (r.get("weights") or {}).items())
        row = [r.get("when", ""), r.get("by", ""), r.get("action", ""), r.get("environment", "")]
        row += [r.get("alias") or "", r.get("from_version") or "", r.get("to_version") or "", weights]
        row += [r.get("outcome", ""), r.get("reason", "")]
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


def rollback_main(argv: list[str]) -> None:
    """``scripts/rollback.sh ARGS``: the rollback command alone, so usage and errors name the script."""
    group = typer.main.get_command(_release_app())  # several commands: a group (typer's own click)
    group.commands["rollback"].main(args=argv, prog_name="scripts/rollback.sh")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()

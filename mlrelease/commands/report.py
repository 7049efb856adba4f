"""``mlrelease report``: one self-contained HTML page telling a version's release story (docs/report.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mlrelease.commands.common import PARAMS, project_settings

if TYPE_CHECKING:
    from mlrelease.core.settings import Settings
    from release.report.gather import ReportContext
    from release.report.model import ReleaseReport


def read_params(path: Path) -> tuple[str, dict[str, Any]]:
    """The model's name (validated params.yaml) and the raw sections the report reads (canary, gates, build)."""
    import yaml

    from mlrelease.core.params import load_params

    name = load_params(path).model.name
    raw = yaml.safe_load(path.read_text()) or {}
    return name, raw if isinstance(raw, dict) else {}


def context(settings: Settings, model_name: str, raw: dict[str, Any], base: str | None) -> ReportContext:
    """The report's sources: workspace, registry, audit log, params.yaml and the deployment target (read only)."""
    from deploy.targets import make_target
    from registry.versions import Registry
    from release.audit import AuditLog
    from release.report.gather import ReportContext
    from release.report.sources import MlflowView, Workspace
    from release.report.where import TargetView

    workspace = Workspace(settings.home)
    workspace.require_reports()
    headers = settings.prediction_headers() if settings.protect_metadata else None
    target = make_target(settings.state_dir, settings.target, metrics_headers=headers)
    return ReportContext(
        workspace=workspace,
        view=MlflowView(Registry(model_name, settings)),
        records=AuditLog(settings.state_dir).records(),
        params=raw,
        serving=TargetView(target),
        base=base,
    )


def say(report: ReleaseReport, path: Path) -> None:
    """Where the page is, and the story in three lines."""
    identity = report.identity
    size_kb = path.stat().st_size // 1024
    typer.echo(f"release report of {identity.model_name} version {identity.version}: {path} ({size_kb} KB)")
    failed = f" ({report.failed_gates} failed)" if report.failed_gates else ""
    canaries = f"{len(report.canary_runs)} canary run(s)" if report.canary_runs else "no canary yet"
    typer.echo(f"  {report.gate_count} gates{failed}, {canaries}, {len(report.history)} history record(s)")
    for note in report.notes:
        typer.echo(f"  note: {note}")
    typer.echo("  open it in a browser: it needs no network (plotly.js is inlined)")


def report_command(
    version: str | None = typer.Option(
        None,
        "--version",
        help="A version number or alias (default: the version this workspace's pipeline run registered, "
        "else candidate)",
    ),
    out: Path | None = typer.Option(None, "--out", help="Where to write the page (default reports/release_vN.html)"),
    base: str | None = typer.Option(
        None, "--base", help="Compare with this git ref's committed metrics (a pull request), not with production"
    ),
    params: Path = PARAMS,
) -> None:
    """Write one self-contained HTML page about a version: identity, gates, plots, canary timeline, history, and
    how it compares with production. Exit 2 when there is no such version, no registry or no reports."""
    from release.report.gather import gather
    from release.report.render import write
    from release.report.sources import resolve_version

    settings = project_settings()
    model_name, raw = read_params(params)
    ctx = context(settings, model_name, raw, base)
    chosen = resolve_version(ctx.view, version, ctx.workspace.report("registration.json"))
    report = gather(ctx, chosen)
    path = write(report, out or settings.home / "reports" / f"release_v{chosen}.html")
    say(report, path)


def register(app: typer.Typer) -> None:
    """Add ``mlrelease report`` to the CLI."""
    app.command("report")(report_command)

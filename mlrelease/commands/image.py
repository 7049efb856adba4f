"""``mlrelease build`` and ``mlrelease scan``: the serving image and its security gate."""

from __future__ import annotations

from pathlib import Path

import typer

from mlrelease.core.errors import UserError
from mlrelease.core.params import ConfigFileError

# what build and scan leave to the CLI's one-line answer (exit 2); any other failure is theirs to report (exit 1)
USER_MISTAKES = (ConfigFileError, UserError)


def _print_build(report: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="serving image")
    table.add_column("field")
    table.add_column("value")
    for key in (
        "image_ref",
        "image_digest",
        "image_size_mb",
        "engine",
        "base_image",
        "model_version",
        "artifact_sha256",
        "git_commit",
        "build_seconds",
        "smoke",
        "removed_images",
    ):
        table.add_row(key, str(report.get(key, "")))
    Console().print(table)


def _print_scan(report: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"scan {'PASSED' if report['passed'] else 'FAILED'}: {report.get('image') or 'source'}")
    for column in ("check", "tool", "status", "findings", "detail"):
        table.add_column(column)
    checks = report["checks"]
    assert isinstance(checks, list)
    for check in checks:
        status = "not checked" if check["status"] == "not_checked" else check["status"]
        table.add_row(check["name"], check["tool"], status, str(len(check["findings"])), check["detail"])
    console = Console()
    console.print(table)
    for check in checks:
        for finding in check["findings"][:50]:
            console.print(
                f"[{finding['level']}] {finding['tool']} {finding['rule']} at {finding['where']}: {finding['message']}",
                markup=False,
            )
    reasons = report.get("reasons") or []
    assert isinstance(reasons, list)
    for reason in reasons:
        console.print(f"- {reason}", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``build`` and ``scan`` to the CLI."""

    @app.command("build")
    def build_cmd(
        version: str = typer.Option(None, "--version", help="registry version or alias (default: candidate)"),
        model_dir: Path = typer.Option(None, "--model-dir", help="build a local bundle folder instead"),
        base_image: str = typer.Option(
            None,
            "--base-image",
            help="e.g. python:3.11-slim@sha256:... (default: params build.base_image, else an mmdebstrap Debian base)",
        ),
        engine: str = typer.Option(None, "--engine", help="docker, podman or buildah (default: detect)"),
        no_smoke: bool = typer.Option(False, "--no-smoke", help="skip the smoke test (not for releases)"),
        params: Path = typer.Option(Path("params.yaml"), "--params"),
        report: Path = typer.Option(Path("reports/build.json"), "--report"),
    ) -> None:
        """Build the serving image (NAME:VERSION-GITSHA), smoke-test it, and record digest and size."""
        from deploy.image.stage import run_build

        try:
            result = run_build(
                Path.cwd(), params, model_dir, version, report, base_image, smoke=not no_smoke, engine_name=engine
            )
        except USER_MISTAKES:
            raise  # a file, flag or setting to fix: one line from the CLI, exit 2
        except Exception as exc:
            typer.echo(f"build failed: {exc}", err=True)
            raise typer.Exit(1) from exc
        _print_build(result)

    @app.command("scan")
    def scan_cmd(
        image: str = typer.Option(None, "--image", help="image to scan (default: image_ref in reports/build.json)"),
        source_only: bool = typer.Option(False, "--source-only", help="only bandit and hadolint, no image"),
        engine: str = typer.Option(None, "--engine", help="docker, podman or buildah (default: detect)"),
        params: Path = typer.Option(Path("params.yaml"), "--params"),
        reports: Path = typer.Option(Path("reports"), "--reports"),
    ) -> None:
        """Security gate: bandit, hadolint, image policy, SBOM and vulnerabilities; exit 1 when it fails."""
        from deploy.image.stage import run_scan

        try:
            result = run_scan(
                Path.cwd(), params, image, reports / "build.json", reports, engine, with_image=not source_only
            )
        except USER_MISTAKES:
            raise  # a file, flag or setting to fix: one line from the CLI, exit 2
        except Exception as exc:
            typer.echo(f"scan failed: {exc}", err=True)
            raise typer.Exit(1) from exc
        _print_scan(result)
        if not result["passed"]:
            raise typer.Exit(1)

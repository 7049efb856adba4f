"""CLI: ``mlrelease serve`` and ``mlrelease loadtest`` (benchmarks live in benchmarks/, outside the product)."""

from __future__ import annotations

from pathlib import Path

import typer


def _serve(
    model_dir: Path | None = typer.Option(None, help="Bundle folder (model.pt + model_card.json)"),
    model_uri: str | None = typer.Option(None, help="Registry model: models:/NAME@ALIAS or models:/NAME/V"),
    model_version: str | None = typer.Option(None, help="Version label to report"),
    host: str | None = typer.Option(None, help="Bind address (default MLRELEASE_HOST)"),
    port: int | None = typer.Option(None, help="Port (default MLRELEASE_PORT)"),
) -> None:
    """Serve one model (other settings from MLRELEASE_* variables)."""
    from deploy.serving.__main__ import main

    if model_dir is not None and not model_dir.is_dir():
        from mlrelease.core.errors import UserError

        raise UserError(f"{model_dir}: no such folder; --model-dir takes a bundle folder (model.pt, model_card.json)")
    argv: list[str] = []
    for flag, value in (
        ("--model-dir", model_dir),
        ("--model-uri", model_uri),
        ("--model-version", model_version),
        ("--host", host),
        ("--port", port),
    ):
        if value is not None:
            argv += [flag, str(value)]
    raise typer.Exit(main(argv))


def _loadtest(
    url: str = typer.Option(..., help="Server base URL, e.g. http://127.0.0.1:8080"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml"),
    test_csv: Path = typer.Option(Path("data/prepared/test.csv"), help="Test split (payload rows)"),
    out: Path = typer.Option(Path("reports/loadtest.json"), help="JSON report"),
    html: Path = typer.Option(Path("reports/loadtest.html"), help="Locust HTML report"),
) -> None:
    """Headless Locust against URL with the SLO gates of params.yaml; exits 1 naming each breached SLO, 2 when the
    test could not run (a params.yaml mistake, a server that does not answer, Locust failing)."""
    from rich.console import Console
    from rich.table import Table

    from deploy.loadtest.runner import LoadtestError, LoadtestParams, run_loadtest
    from mlrelease.core.errors import one_line
    from mlrelease.core.params import ConfigFileError, load_params, section
    from mlrelease.core.settings import get_settings

    console = Console()
    try:
        params = load_params(params_file)
        report = run_loadtest(
            url,
            section(params, "loadtest", LoadtestParams),
            test_csv,
            params.data.target,
            out,
            html,
            get_settings().prediction_headers(),
        )
    except (LoadtestError, ConfigFileError) as exc:
        typer.echo(f"mlrelease loadtest: could not run: {one_line(exc)}", err=True)
        raise typer.Exit(2) from exc
    table = Table("metric", "value", title=f"loadtest {url}")
    for key, value in report["stats"].items():
        table.add_row(key, f"{value:.4g}")
    console.print(table)
    for breach in report["breaches"]:
        console.print(f"[red]SLO breached:[/red] {breach}")
    raise typer.Exit(1 if report["breaches"] else 0)


def register(app: typer.Typer) -> None:
    """Add the serving commands to the mlrelease CLI."""
    app.command("serve")(_serve)
    app.command("loadtest")(_loadtest)

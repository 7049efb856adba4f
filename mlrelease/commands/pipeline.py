"""Pipeline commands: run the DVC pipeline, summarize what it produced, check any data file against a schema."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

REPORTS = Path("reports")
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, soft_wrap=True)  # no hard line breaks: paths stay copyable


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _gates_table() -> Table:
    table = Table(title="Gates", show_lines=False)
    for col in ("stage", "gate", "value", "threshold", "result"):
        table.add_column(col)
    for stage, gate in _all_gates():
        verdict = "[green]PASS[/]" if gate["passed"] else "[red]FAIL[/]"
        table.add_row(stage, gate["name"], str(gate["value"]), str(gate["threshold"]), verdict)
    return table


def _registry_rows(registration: dict[str, Any]) -> list[tuple[str, str]]:
    from registry.client import get_client

    client = get_client()
    version = client.get_model_version(registration["model_name"], str(registration["version"]))
    tags = version.tags
    return [
        ("model", f"{version.name} version {version.version}" + ("" if registration["created"] else " (existing)")),
        ("aliases", ", ".join(sorted(version.aliases)) or "-"),
        ("artifact sha256", tags.get("artifact_sha256", "-")),
        ("git commit", tags.get("git_commit", "-")),
        ("data hash", tags.get("data_hash", "-")),
        ("model uri", registration["model_uri"]),
    ]


def _all_gates() -> list[tuple[str, dict[str, Any]]]:
    return [
        (stage, gate)
        for stage, name in (("evaluate", "evaluate_gates.json"), ("export", "export.json"))
        for gate in _load_json(REPORTS / name).get("gates", [])
    ]


def summary_markdown(registration: dict[str, Any]) -> str:
    """The same summary as Markdown, for a CI job summary."""
    lines = ["## Registered model", "", "| | |", "|---|---|"]
    lines += [f"| {key} | `{value}` |" for key, value in _registry_rows(registration)]
    lines += ["", "## Gates", "", "| stage | gate | value | threshold | result |", "|---|---|---|---|---|"]
    lines += [
        f"| {stage} | {g['name']} | {g['value']} | {g['threshold']} | {'PASS' if g['passed'] else 'FAIL'} |"
        for stage, g in _all_gates()
    ]
    return "\n".join(lines)


def summary(markdown: bool = False) -> None:
    """Print what the pipeline produced: registered version, aliases, gates and where the reports are."""
    registration = _load_json(REPORTS / "registration.json")
    if not registration:
        err_console.print("[red]No registration found[/] (reports/registration.json): run `dvc repro` first.")
        raise typer.Exit(1)
    if markdown:
        typer.echo(summary_markdown(registration))
        return
    table = Table(title="Registered model", show_header=False)
    for key, value in _registry_rows(registration):
        table.add_row(key, value)
    metrics = _load_json(REPORTS / "metrics.json")
    table.add_row(
        "test metrics", ", ".join(f"{k}={metrics[k]:.4f}" for k in ("accuracy", "roc_auc", "f1") if k in metrics)
    )
    console.print(table)
    console.print(_gates_table())
    files = sorted(str(p) for p in REPORTS.rglob("*") if p.is_file() and p.name != ".gitkeep")
    console.print("Reports: " + ", ".join(files))
    console.print("Bundle: models/model.pt, models/model_card.json, models/reference_stats.json")


def _dvc() -> str:
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


def run_pipeline(force: bool = False) -> int:
    """`dvc repro` with the project's interpreter first on PATH, so stages run in the same environment."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    cmd = [_dvc(), "repro", *(["--force"] if force else [])]
    return subprocess.run(cmd, env=env, check=False).returncode


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to the CLI."""

    @app.command("run")
    def run_cmd(force: bool = typer.Option(False, help="Re-run every stage even if nothing changed")) -> None:
        """Run the DVC pipeline (prepare -> validate -> train -> evaluate -> export -> register)."""
        raise typer.Exit(run_pipeline(force))

    @app.command("summary")
    def summary_cmd(markdown: bool = typer.Option(False, help="Markdown, for CI job summaries")) -> None:
        """Show the registered version, its aliases, the gates and the reports."""
        summary(markdown)

    @app.command("demo")
    def demo_cmd() -> None:
        """Run the whole pipeline on the embedded default data, then print what it produced."""
        code = run_pipeline()
        if code != 0:
            err_console.print(f"[red]Pipeline failed (exit {code})[/]; the stage's message above says why.")
            raise typer.Exit(code)
        summary()

    @app.command("validate-data")
    def validate_data_cmd(
        file: Path = typer.Argument(..., help="CSV or Parquet file to check"),
        schema: Path | None = typer.Option(None, help="Data contract (default: data.schema in params.yaml)"),
        report: Path | None = typer.Option(None, help="Also write the JSON report here"),
    ) -> None:
        """Check any data file against the data contract; exit 1 listing every failing column and check."""
        validate_data(file, schema, report)

    @app.command("infer-schema")
    def infer_schema_cmd(
        file: Path = typer.Argument(..., help="A trusted CSV or Parquet sample"),
        target: str = typer.Option(..., help="Name of the label column"),
        out: Path = typer.Option(..., help="Where to write the YAML contract"),
        margin: float = typer.Option(0.1, help="Widen observed ranges by this share of their span"),
    ) -> None:
        """Draft a data contract from a trusted sample, to review and commit next to your data."""
        from pipelines.data import load_source
        from pipelines.schema import dump_contract, infer_contract

        frame = load_source(file, target)
        contract = infer_contract(frame, target, name=file.stem, margin=margin)
        out.write_text(dump_contract(contract, f"Data contract drafted from {file.name} by `mlrelease infer-schema`"))
        console.print(f"Wrote {out}: {len(contract.features)} features, labels {contract.target.labels}")


def validate_data(file: Path, schema: Path | None, report: Path | None) -> None:
    """Body of `mlrelease validate-data`."""
    from mlrelease.params import load_params
    from pipelines.schema import load_contract
    from pipelines.validate import format_results, validate_file, write_report

    contract = load_contract(schema or load_params().data.schema_path)
    result = validate_file(file, contract)
    if report:
        write_report([result], report)
    if result.valid:
        console.print(f"[green]{file}: valid[/] ({result.rows} rows, {len(contract.features)} features)")
        return
    err_console.print(format_results([result]), markup=False, highlight=False)
    raise typer.Exit(1)

"""Pipeline commands: run the DVC pipeline, summarize what it produced, check any data file against a schema."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from pipelines.freshness import ReportState

REPORTS = Path("reports")
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, soft_wrap=True)  # no hard line breaks: paths stay copyable


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


GATE_REPORTS = (("evaluate", "evaluate_gates.json"), ("export", "export.json"))
Gate = tuple[str, dict[str, Any], "ReportState | None"]  # stage, gate, the state of the report it comes from


def _gates_table(gates: list[Gate]) -> Table:
    table = Table(title="Gates", show_lines=False)
    with_state = any(state is not None for _, _, state in gates)
    for col in ("stage", "gate", "value", "threshold", "result", *(["report"] if with_state else [])):
        table.add_column(col)
    for stage, gate, state in gates:
        verdict = "[green]PASS[/]" if gate["passed"] else "[red]FAIL[/]"
        label = [] if not with_state else ["-" if state is None else state.label]
        table.add_row(stage, gate["name"], str(gate["value"]), str(gate["threshold"]), verdict, *label)
    return table


def _report_states() -> dict[str, ReportState]:
    """Which reports this workspace's latest run wrote (pipelines.freshness; empty outside a DVC workspace)."""
    from pipelines.freshness import report_states

    return report_states()


def _fresh(states: dict[str, ReportState], path: Path) -> bool:
    """Whether the report at ``path`` is this run's (True when DVC cannot tell: nothing is claimed then)."""
    state = states.get(path.as_posix())
    return state is None or state.fresh


def _registration(states: dict[str, ReportState], bundle: Path = Path("models")) -> dict[str, Any]:
    """reports/registration.json when it registered the model now in ``bundle``: a later run that stopped before
    register leaves the old file in place (DVC does not delete it), and its sha256 then names another model. When
    its inputs changed since, it stays, and the summary says it is stale."""
    registration = _load_json(REPORTS / "registration.json")
    card = _load_json(bundle / "model_card.json")
    if registration and registration.get("artifact_sha256") != card.get("sha256"):
        return {}
    if any(not gate["passed"] for _, gate, _ in _this_runs(_all_gates(states))):
        return {}  # this run's gates failed: the registration (and maybe the bundle) are an earlier run's
    return registration


def _registry_rows(registration: dict[str, Any]) -> list[tuple[str, str]]:
    from mlflow.exceptions import MlflowException

    from registry.client import get_client
    from registry.reach import RegistryUnreachable

    client = get_client()
    try:
        version = client.get_model_version(registration["model_name"], str(registration["version"]))
    except RegistryUnreachable:
        raise  # one line from the CLI: the registry to start, or the URI to fix
    except MlflowException as exc:
        return [
            ("model", f"{registration['model_name']} version {registration['version']}"),
            ("registry", f"cannot read it ({exc.error_code}): is MLFLOW_TRACKING_URI the registry the pipeline used?"),
        ]
    tags = version.tags
    return [
        ("model", f"{version.name} version {version.version}" + ("" if registration["created"] else " (existing)")),
        ("aliases", ", ".join(sorted(version.aliases)) or "-"),
        ("artifact sha256", tags.get("artifact_sha256", "-")),
        ("git commit", tags.get("git_commit", "-")),
        ("data hash", tags.get("data_hash", "-")),
        ("model uri", registration["model_uri"]),
    ]


def _all_gates(states: dict[str, ReportState]) -> list[Gate]:
    """Every gate in the gate reports, with the state of its report (None: DVC cannot tell)."""
    return [
        (stage, gate, states.get((REPORTS / name).as_posix()))
        for stage, name in GATE_REPORTS
        for gate in _load_json(REPORTS / name).get("gates", [])
    ]


def _this_runs(gates: list[Gate]) -> list[Gate]:
    """The gates whose report this workspace's latest run wrote."""
    return [gate for gate in gates if gate[2] is None or gate[2].fresh]


def _stale_lines(states: dict[str, ReportState]) -> list[str]:
    """One line per report that is not this run's, saying why."""
    return [f"{path} is stale: {state.why}" for path, state in sorted(states.items()) if not state.fresh]


def summary_markdown(registration: dict[str, Any], states: dict[str, ReportState] | None = None) -> str:
    """The same summary as Markdown, for a CI job summary; without a registration, which gates failed."""
    states = _report_states() if states is None else states
    gates = _all_gates(states)
    lines = ["## Registered model", ""]
    if registration:
        lines += ["| | |", "|---|---|"]
        lines += [f"| {key} | `{value}` |" for key, value in _registry_rows(registration)]
    else:
        lines.append(f"**No model was registered.** {_why_not_registered(gates)}")
    extra = " report |" if states else ""
    lines += ["", "## Gates", "", f"| stage | gate | value | threshold | result |{extra}", "|---|---|---|---|---|"]
    lines[-1] += "---|" if states else ""
    lines += [
        f"| {stage} | {g['name']} | {g['value']} | {g['threshold']} | {'PASS' if g['passed'] else 'FAIL'} |"
        + (f" {'-' if state is None else state.label} |" if states else "")
        for stage, g, state in gates
    ]
    stale = _stale_lines(states)
    if stale:
        lines += ["", "Not from this run:", "", *[f"- {line}" for line in stale]]
    return "\n".join(lines)


def _why_not_registered(gates: list[Gate]) -> str:
    """One sentence for a summary without a registration: the failed gates by name, or where the run stopped."""
    current = _this_runs(gates)
    failed = [f"`{g['name']}` ({g['value']} vs {g['threshold']})" for _, g, _ in current if not g["passed"]]
    if failed:
        return (
            f"Failed gates: {', '.join(failed)}. Thresholds are data: `gates:` and `export:` in params.yaml; "
            "improve the model rather than loosen them."
        )
    if current:
        return "Every gate passed; register (or a stage before it) failed: see the pipeline's log."
    if gates:
        return (
            "No run in this workspace wrote the gate reports in reports/ (they are stale: committed, or their "
            "inputs changed since); `mlrelease run` produces this run's."
        )
    return "The pipeline stopped before its gates ran (or never ran: `mlrelease run`); see its log."


def summary(markdown: bool = False) -> None:
    """Print what the pipeline produced: registered version, aliases, gates and where the reports are; each report
    marked as this run's or stale."""
    states = _report_states()
    registration = _registration(states)
    if markdown:
        typer.echo(summary_markdown(registration, states))
        raise typer.Exit(0 if registration else 1)
    gates = _all_gates(states)
    if not registration:
        err_console.print(f"[red]No model was registered by the last run.[/] {_why_not_registered(gates)}")
        if gates:
            console.print(_gates_table(gates))
        _print_stale(states)
        raise typer.Exit(1)
    table = Table(title="Registered model", show_header=False)
    for key, value in _registry_rows(registration):
        table.add_row(key, value)
    metrics = _load_json(REPORTS / "metrics.json")
    table.add_row(
        "test metrics", ", ".join(f"{k}={metrics[k]:.4f}" for k in ("accuracy", "roc_auc", "f1") if k in metrics)
    )
    console.print(table)
    console.print(_gates_table(gates))
    files = sorted(p for p in REPORTS.rglob("*") if p.is_file() and p.name != ".gitkeep")
    console.print("Reports: " + ", ".join(f"{p}{'' if _fresh(states, p) else ' (stale)'}" for p in files))
    console.print("Bundle: models/model.pt, models/model_card.json, models/reference_stats.json")
    _print_stale(states)


def _print_stale(states: dict[str, ReportState]) -> None:
    """Say which reports are not this run's, and why (nothing when all are, or DVC cannot tell)."""
    for line in _stale_lines(states):
        err_console.print(line, markup=False, highlight=False)


def compare(base: str, markdown: bool, accept: bool) -> None:
    """Body of `mlrelease compare`."""
    import yaml

    from pipelines.compare import compare_with, table
    from pipelines.compare import markdown as comparison_markdown

    head = _load_json(REPORTS / "metrics.json")
    if not head:
        err_console.print("[red]No reports/metrics.json[/]: the pipeline stopped before evaluate; see its log.")
        raise typer.Exit(1)
    try:
        params = yaml.safe_load(Path("params.yaml").read_text()) or {}
        result = compare_with(base, head, params)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        err_console.print(f"[red]compare:[/] {exc}")
        raise typer.Exit(2) from exc
    if result is None:
        typer.echo(f"{base} has no committed reports/metrics.json: nothing to compare with (a first model).")
        return
    if markdown:
        typer.echo(comparison_markdown(result, base, accepted=accept))
    else:
        console.print(table(result, base, accepted=accept), highlight=False)
    if result.passed:
        return
    what = [f"{row.name} {row.head} vs base {row.base}" for row in result.regressions] + result.loosened
    if accept:
        err_console.print(f"accepted (--accept): {'; '.join(what)}")
        return
    err_console.print(
        f"[red]compare: this change falls behind {base} or loosens its checks:[/] {'; '.join(what)}. Improve the "
        "model or keep the thresholds, or have a reviewer accept it (the pull request's `accept-regression` label "
        "runs this with --accept)."
    )
    raise typer.Exit(1)


def _dvc() -> str:
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


def remove_outputs(dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """Delete every output the pipeline declares (outs, metrics, plots; not dvc.lock), so that after a run each
    report is that run's: committed reports are another commit's figures until their stage runs again."""
    from pipelines.register import pipeline_outputs

    removed = []
    for name in sorted(pipeline_outputs(dvc_yaml) - {"dvc.lock"}):
        path = Path(name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def require_pipeline(dvc_yaml: Path = Path("dvc.yaml")) -> None:
    """The pipeline runs from the folder holding dvc.yaml: said plainly (exit 2), before DVC says it its way."""
    from mlrelease.core.errors import UserError

    if not dvc_yaml.is_file():
        raise UserError(f"no {dvc_yaml} in {Path.cwd()}: run the pipeline from the repository root")


def registry_free_stages(pipeline: dict[str, Any]) -> list[str]:
    """The stages (dvc.yaml order) before the first one whose code talks to the registry (it lists registry/ code in
    its deps): what a run against another registry may take from the run cache. A restored `train` or `register`
    would name a run or a version of the registry it ran against, not of this one."""
    free = []
    for name, stage in (pipeline.get("stages") or {}).items():
        deps = [dep for dep in stage.get("deps") or [] if isinstance(dep, str)]
        if any(dep.startswith("registry/") for dep in deps):
            break
        free.append(name)
    return free


def repro_commands(dvc: str, force: bool, fresh: bool, free: list[str]) -> list[list[str]]:
    """The `dvc repro` calls of a run. --fresh (a pull request's throwaway registry): the registry-free stages may
    be restored from a pulled run cache; every later stage runs here, against this run's registry."""
    if force or not fresh:
        return [[dvc, "repro", *(["--force"] if force else [])]]
    return [*([[dvc, "repro", *free]] if free else []), [dvc, "repro", "--no-run-cache"]]


def run_pipeline(force: bool = False, fresh: bool = False) -> int:
    """`dvc repro` with the project's interpreter first on PATH, so stages run in the same environment."""
    require_pipeline()
    if fresh:
        removed = remove_outputs()
        console.print(f"--fresh: removed {len(removed)} pipeline outputs ({', '.join(removed) or 'none'})")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    free = registry_free_stages(yaml.safe_load(Path("dvc.yaml").read_text()) or {}) if fresh else []
    for cmd in repro_commands(_dvc(), force, fresh, free):
        code = subprocess.run(cmd, env=env, check=False).returncode
        if code:
            return code
    return 0


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to the CLI."""

    @app.command("run")
    def run_cmd(
        force: bool = typer.Option(False, help="Re-run every stage even if nothing changed"),
        fresh: bool = typer.Option(
            False,
            help="Remove every output dvc.yaml declares first (CI: no committed report passes for this run's); "
            "only the stages before the first that talks to the registry may come from the run cache",
        ),
    ) -> None:
        """Run the DVC pipeline (prepare -> validate -> train -> evaluate -> export -> register)."""
        raise typer.Exit(run_pipeline(force, fresh))

    @app.command("summary")
    def summary_cmd(markdown: bool = typer.Option(False, help="Markdown, for CI job summaries")) -> None:
        """Show the registered version, its aliases, the gates and the reports, each report marked `this run` or
        `stale`: stale ones were not written by this workspace's latest run (committed ones in a fresh clone, or
        their stage's inputs changed since; as `dvc status` tells). Exit 1 when this run registered nothing."""
        summary(markdown)

    @app.command("compare")
    def compare_cmd(
        base: str = typer.Option(..., help="Git ref of the base branch, e.g. origin/main"),
        markdown: bool = typer.Option(False, help="Markdown, for CI job summaries"),
        accept: bool = typer.Option(False, "--accept", help="Report a regression or loosened gate, but exit 0"),
    ) -> None:
        """This workspace's model against the base branch's committed one: accuracy and AUC within the base's
        champion tolerance, gate thresholds not loosened (exit 1 otherwise, unless --accept)."""
        compare(base, markdown, accept)

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
        """Draft a data contract from a trusted sample, to review and commit next to your data. It is checked
        against that sample before it is written (a value it would refuse, e.g. inf: exit 1, nothing written)."""
        from pipelines.draft import draft_contract

        require_file(file)
        contract = draft_contract(file, target, out, margin)
        console.print(f"Wrote {out}: {len(contract.features)} features, labels {contract.target.labels}")


def require_file(file: Path) -> None:
    """A data file named on the command line must exist: said plainly (exit 2), not as a failed check."""
    from mlrelease.core.errors import UserError

    if not file.is_file():
        raise UserError(f"{file}: no such file (the path is taken from the current directory, {Path.cwd()})")


def validate_data(file: Path, schema: Path | None, report: Path | None) -> None:
    """Body of `mlrelease validate-data`: a file that cannot be read is a usage error (exit 2), data that breaks
    the contract a failed check (exit 1, every failing column listed)."""
    from mlrelease.core.params import load_params
    from pipelines.data import load_source
    from pipelines.schema import load_contract
    from pipelines.validate import format_results, validate_frame, write_report

    require_file(file)
    contract = load_contract(schema or load_params().data.schema_path)
    result = validate_frame(load_source(file, contract.target.name), contract, name=str(file))
    if report:
        write_report([result], report)
    if result.valid:
        console.print(f"[green]{file}: valid[/] ({result.rows} rows, {len(contract.features)} features)")
        return
    err_console.print(format_results([result]), markup=False, highlight=False)
    raise typer.Exit(1)

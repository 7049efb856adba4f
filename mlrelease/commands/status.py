"""``mlrelease status``: what serves where, replica by replica, as a table or as JSON for scripts and monitors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from deploy.targets.base import DeploymentTarget, SlotStatus
from mlrelease.commands.common import PARAMS, project_settings

#: supervisor states in which a replica needs a human (the supervisor gave up, or nothing runs it)
NEEDS_A_HUMAN = frozenset({"FATAL", "STOPPED", "EXITED", "UNKNOWN"})


def problems(rows: list[SlotStatus]) -> list[str]:
    """Why production needs a human: a routed slot with no healthy replica, or a replica the supervisor gave up."""
    found = []
    for r in rows:
        if r.weight <= 0:
            continue
        if not r.healthy and not any(replica.healthy for replica in r.replicas):
            found.append(
                f"{r.environment}/{r.slot} (version {r.version}) takes {r.weight:g}% of traffic and is not "
                f"healthy: {r.detail}"
            )
        for replica in r.replicas:
            if replica.state in NEEDS_A_HUMAN:
                found.append(f"{r.environment}/{r.slot} replica {replica.url} is down for good: {replica.detail}")
    return found


def as_document(target: DeploymentTarget, rows: list[SlotStatus], running: str | None) -> dict[str, Any]:
    """The status as one JSON document: environments, slots, replicas (pid, port, state, health), routers."""
    environments: dict[str, Any] = {}
    for r in rows:
        env = environments.setdefault(r.environment, {"entry_url": None, "tls_url": None, "slots": {}})
        env["slots"][r.slot] = {
            "version": r.version,
            "weight": r.weight,
            "healthy": r.healthy,
            "detail": r.detail,
            "expires_at": r.expires_at,
            "replicas": [
                {"port": x.port, "url": x.url, "pid": x.pid, "state": x.state, "healthy": x.healthy, "detail": x.detail}
                for x in r.replicas
            ],
        }
    for name, env in environments.items():
        env["entry_url"] = target.entry_url(name)
        env["tls_url"] = target.tls_url(name)
    found = problems(rows)
    return {
        "target": target.describe(),
        "healthy": not found,
        "problems": found,
        "operation_in_progress": running,
        "environments": environments,
    }


def print_table(target: DeploymentTarget, rows: list[SlotStatus], running: str | None, logs: Path) -> None:
    """One row per replica, the slot's columns on its first replica only; then what needs doing."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mlrelease deployments")
    for col in ("environment", "slot", "version", "weight %", "replica", "pid", "state", "healthy", "detail"):
        table.add_column(col)
    for r in rows:
        for index, x in enumerate(r.replicas):
            first = index == 0
            table.add_row(
                r.environment if first else "",
                r.slot if first else "",
                r.version if first else "",
                f"{r.weight:g}" if first else "",
                x.url,
                str(x.pid or ""),
                x.state.lower(),
                "[green]yes[/green]" if x.healthy else "[red]no[/red]",
                x.detail or (r.detail if first and r.healthy else ""),
            )
    console = Console(width=max(Console().width, 150))
    console.print(table if rows else "nothing deployed yet (`mlrelease promote staging`)")
    entry, tls = target.entry_url("production"), target.tls_url("production")
    if entry:
        console.print(f"production entry point: {entry}" + (f" (TLS: {tls})" if tls else ""), highlight=False)
    console.print(f"target: {target.describe()}", highlight=False)
    if running:
        console.print(running, highlight=False, soft_wrap=True)
    for problem in problems(rows):
        console.print(
            f"[red]{problem}. Next: `mlrelease reconcile` restarts it, `scripts/rollback.sh` moves traffic to the "
            f"previous version; logs are in {logs}[/red]",
            highlight=False,
            soft_wrap=True,
        )


def status_command(
    params: Path = PARAMS,
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of the table (for scripts)"),
) -> None:
    """What serves where, replica by replica, at which weight, healthy or not (exit 1 when a human is needed)."""
    from deploy.targets import make_target
    from release.teardown import in_progress

    settings = project_settings()
    target = make_target(settings.state_dir, settings.target)
    rows = target.status()
    running = in_progress(settings.state_dir)
    if as_json:
        typer.echo(json.dumps(as_document(target, rows, running), indent=2, sort_keys=True))
    else:
        print_table(target, rows, running, settings.state_dir / "logs")
    if problems(rows):
        raise typer.Exit(1)

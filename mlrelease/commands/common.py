"""What several command modules share: the --params option and the workspace check."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from mlrelease.core.settings import Settings

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params.yaml with canary: and promotion: sections")


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

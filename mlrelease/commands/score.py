"""CLI: ``mlrelease score``, batch predictions of a registered version for a CSV or Parquet file (scoring/)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from mlrelease.core.progress import Progress

log = logging.getLogger("mlrelease.score")


def _score(
    model: str | None = typer.Option(
        None, help="models:/NAME@ALIAS or models:/NAME/V (default: models:/<model.name in params.yaml>@production)"
    ),
    input_path: Path = typer.Option(..., "--input", help="CSV or Parquet file (Spark: a Parquet file or folder)"),
    output: Path = typer.Option(..., help="Predictions: .csv or .parquet (Spark: a .parquet folder)"),
    rejects: Path | None = typer.Option(
        None, help="Rows that break the contract, with the reason (default: next to the output, OUTPUT.rejects.EXT)"
    ),
    key: list[str] = typer.Option(
        [],
        help="Key column copied to the outputs (repeatable; default: every column "
        "that is neither a feature nor the target, else the row number)",
    ),
    engine: str = typer.Option("local", help="local (this process, in chunks) or spark"),
    master: str = typer.Option("local[2]", help="Spark master, e.g. local[2] or spark://host:7077"),
    chunk_rows: int = typer.Option(50_000, min=1, help="Rows per chunk (local engine)"),
    schema: Path | None = typer.Option(None, help="Data contract (default: the version's, from its git commit)"),
) -> None:
    """Score a file with a registered version: rows that break its data contract go to the rejects file with the
    reason; predictions carry the row's keys, the version and its artifact sha256."""
    from mlrelease.core.errors import UserError
    from mlrelease.core.settings import get_settings
    from scoring.job import ScoreJob, score

    if engine not in ("local", "spark"):
        raise UserError(f"--engine {engine!r}: use local or spark")
    settings = get_settings()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our own bar; MLflow's would interleave
    job = ScoreJob(
        model=model or _default_model(settings.home),
        input=input_path,
        output=output,
        rejects=rejects,
        keys=tuple(key),
        engine=engine,  # type: ignore[arg-type]  # checked above
        master=master,
        chunk_rows=chunk_rows,
        schema=schema,
    )
    result = score(job, settings, _progress)
    for reason, count in list(result.reasons.items())[:5]:
        typer.echo(f"rejected {count}: {reason}")
    typer.echo(result.summary())


def _default_model(home: Path) -> str:
    """models:/<model.name from params.yaml>@production."""
    from mlrelease.core.errors import UserError
    from mlrelease.core.params import load_params

    path = home / "params.yaml"
    if not path.is_file():
        raise UserError(f"no --model given and no {path} to take model.name from: pass --model models:/NAME@ALIAS")
    return f"models:/{load_params(path).model.name}@production"


@contextmanager
def _progress(label: str, total: int | None, unit: str) -> Iterator[Progress]:
    from mlrelease.core.progress import progress

    with progress(label, total, unit=unit, log=log) as bar:
        yield bar


def register(app: typer.Typer) -> None:
    """Add ``score`` to the mlrelease CLI."""
    app.command("score")(_score)

"""The ``mlrelease`` console command: one entry point for the pipeline, serving, image, release and rollback."""

from __future__ import annotations

import importlib
import logging
import os

import typer

COMMAND_MODULES = (
    "mlrelease.commands.pipeline",
    "mlrelease.commands.serving",
    "mlrelease.commands.image",
    "mlrelease.commands.release",
)

app = typer.Typer(
    name="mlrelease",
    help="Release pipeline for PyTorch models: data checks, training gates, registry, image, canary, rollback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging")) -> None:
    """Set up logging and quiet third-party telemetry before any command runs."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(app)


_register_commands()


if __name__ == "__main__":
    app()

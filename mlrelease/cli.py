"""The ``mlrelease`` console command: one entry point for the pipeline, serving, image, release and rollback.

A user's mistake (a bad file, flag, folder or setting, a service that does not answer) ends in one line on stderr
and exit 2 (1 when a check failed); anything else is a bug and keeps its traceback. Exit codes: docs/cli.md.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from mlrelease.core.errors import EXIT_CANNOT_RUN, UserError, one_line

COMMAND_MODULES = (
    "mlrelease.commands.pipeline",
    "mlrelease.commands.serving",
    "mlrelease.commands.image",
    "mlrelease.commands.release",
    "mlrelease.commands.report",
    "mlrelease.commands.render",
    "mlrelease.commands.score",
)
# the OSErrors whose file name is the whole story: a path the user gave (or a folder the command needs) is wrong
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
# retries of a registry that does not answer: one line from the registry check says it instead (-v shows them)
QUIET_LOGGERS = ("urllib3.connectionpool",)

log = logging.getLogger("mlrelease")


def explain(exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit code for a user's mistake; None for anything else (a bug keeps its traceback)."""
    from pydantic import ValidationError

    from mlrelease.core.params import ConfigFileError

    if isinstance(exc, typer.TyperException):  # click's: a bad flag, value or command name (exit 2)
        context = getattr(exc, "ctx", None)
        usage = f" (see `{context.command_path} --help`)" if context is not None else ""
        return exc.format_message() + usage, exc.exit_code
    if isinstance(exc, UserError):
        return str(exc), exc.exit_code
    if isinstance(exc, ConfigFileError):  # most say what to do in closing parentheses; the rest get this
        hint = "" if str(exc).rstrip().endswith(")") else " (fix that file, then run the command again)"
        return f"{exc}{hint}", EXIT_CANNOT_RUN
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        return settings_problem(exc), EXIT_CANNOT_RUN
    if isinstance(exc, PATH_ERRORS) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror} (paths are taken from {os.getcwd()})", EXIT_CANNOT_RUN
    if isinstance(exc, pipeline_errors()):
        return str(exc), EXIT_CANNOT_RUN
    return registry_problem(exc)


def pipeline_errors() -> tuple[type[Exception], ...]:
    """The user's mistakes the stage modules raise as ValueErrors of their own (a stage's dvc.yaml deps list the
    project code it imports; these stay within it): an unreadable data file, a sample no contract fits."""
    from pipelines.data import DataSourceError
    from pipelines.schema import ContractInferenceError

    return DataSourceError, ContractInferenceError


def settings_problem(exc: Any) -> str:
    """A pydantic error of mlrelease.core.settings.Settings, said as the environment variables to fix."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        name = "MLFLOW_TRACKING_URI" if field == "mlflow_tracking_uri" else f"MLRELEASE_{field.upper()}"
        problems.append(f"{name}: {error['msg']}" if field else str(error["msg"]))
    return f"invalid setting: {'; '.join(problems)} (fix the environment variable, then run the command again)"


def registry_problem(exc: BaseException) -> tuple[str, int] | None:
    """The line for an MLflow error that reached the top (the registry refused or does not have the thing)."""
    from registry.client import is_registry_error

    if not is_registry_error(exc):
        return None
    message = getattr(exc, "message", None) or str(exc)
    return f"the registry refused: {message} (check MLFLOW_TRACKING_URI, then run the command again)", EXIT_CANNOT_RUN


def where(ctx: typer.Context, exc: BaseException) -> str:
    """``mlrelease COMMAND``, the start of every one-line error: the command that failed."""
    context = getattr(exc, "ctx", None)
    if context is not None:  # a usage error knows the command whose arguments were wrong
        return str(context.command_path)
    return " ".join(part for part in (ctx.command_path, ctx.invoked_subcommand) if part)


def answer(ctx: typer.Context, exc: Exception) -> NoReturn:
    """Say a user's mistake in one line and exit with its code; re-raise anything else (a bug: its traceback).
    The help shown for a bare ``mlrelease`` travels as a usage error too, and stays the help."""
    said = None if type(exc).__name__ == "NoArgsIsHelpError" else explain(exc)
    if said is None:
        raise exc
    message, code = said
    log.debug("the full error", exc_info=True)
    typer.echo(f"{where(ctx, exc)}: {one_line(message)}", err=True)
    raise typer.Exit(code) from exc


class OneLineErrors(TyperGroup):
    """The command group that answers a user's mistake in one line on stderr, with its exit code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Parse ``mlrelease``'s own options; a bad one is answered in one line."""
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as exc:
            answer(ctx, exc)

    def invoke(self, ctx: Any) -> Any:
        """Run the command; a mistake :func:`explain` knows becomes one line and an exit, the rest propagates."""
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise  # a finished command's exit code, or Ctrl-C: as they are
        except Exception as exc:
            answer(ctx, exc)


app = typer.Typer(
    name="mlrelease",
    cls=OneLineErrors,
    help="Release pipeline for PyTorch models: data checks, training gates, registry, image, canary, rollback. "
    "Exit codes: 0 done, 1 a gate or check failed, 2 usage or cannot run (docs/cli.md).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(ctx: typer.Context, verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging")) -> None:
    """Set up logging, quiet third-party telemetry and bound registry calls before any command runs."""
    from registry.client import bounded_requests

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)
    ctx.with_resource(bounded_requests())  # the environment comes back when the command ends


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

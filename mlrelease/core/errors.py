"""Mistakes a user can fix, as exceptions that carry their exit code: the CLI prints each as one line.

Exit codes of every command: 0 done, 1 a gate or check failed, 2 usage or cannot run (a bad file, flag, folder,
setting, or a service that does not answer). A library raises a :class:`UserError` (or a subclass) when its
message alone tells the user what was wrong and what to do; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_DONE = 0
EXIT_CHECK_FAILED = 1
EXIT_CANNOT_RUN = 2


class UserError(Exception):
    """A mistake the user can fix (a file, a flag, a setting, a service to start); the message says what to do."""

    exit_code = EXIT_CANNOT_RUN


class CheckFailed(UserError):
    """Input that was read fine but fails a check (exit 1, like a failed gate)."""

    exit_code = EXIT_CHECK_FAILED


def one_line(text: object, limit: int = 1000) -> str:
    """``text`` on one line (whitespace runs become one space), cut at ``limit`` characters: for stderr and logs."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

"""What a release command did (lines for the summary, an exit code) and the errors that end one."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class PromotionError(RuntimeError):
    """A gate failed or a precondition is not met; ``exit_code`` and the message tell the operator what next."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RegistryBehind(RuntimeError):
    """Traffic moved but the registry did not follow: not a PromotionError, so the journal stays and the next run
    finishes the bookkeeping."""


@dataclass
class Outcome:
    """What a command did, as lines for the one-screen summary, plus the exit code."""

    lines: list[str] = field(default_factory=list)
    exit_code: int = 0

    def say(self, text: str) -> None:
        """Add a line to the summary (and the debug log)."""
        log.debug(text)
        self.lines.append(text)


def given_reason(force: bool, reason: str | None, why: str) -> str | None:
    """The ``--reason`` given, stripped (None when blank); exit 2 for a ``--force`` without one, so that every
    override is recorded with why (``why`` says what it would override)."""
    given = reason.strip() if reason and reason.strip() else None
    if force and given is None:
        raise PromotionError(f"--force needs --reason: {why}", exit_code=2)
    return given

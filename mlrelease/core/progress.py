"""Progress of long work, the way its users expect it: a rich progress bar with the current figures and an ETA on a
terminal, and a plain log line every few seconds elsewhere (a CI log, a file), so nothing looks hung.

``with progress("train", total=40, unit="epochs", log=log) as bar: bar.update(12, train_loss=0.12)``. Nothing
happens at import; rich is imported only when a bar is shown. ``MLRELEASE_PROGRESS_SECONDS`` sets the seconds
between log lines (default 5); ``MLRELEASE_PROGRESS=log`` forces log lines on a terminal too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

EVERY_VAR = "MLRELEASE_PROGRESS_SECONDS"
MODE_VAR = "MLRELEASE_PROGRESS"
DEFAULT_EVERY_S = 5.0
BAR_REFRESH_S = 0.1  # a bar is redrawn at most this often, however often the work reports
FIRST_LINE_S = 1.0  # the first log line comes this soon: work done quicker shows only its final line
Clock = Callable[[], float]


def every_seconds(environ: dict[str, str] | None = None) -> float:
    """Seconds between progress log lines: ``MLRELEASE_PROGRESS_SECONDS`` when it is a positive number, else 5."""
    raw = (environ if environ is not None else os.environ).get(EVERY_VAR, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_EVERY_S
    return value if value > 0 else DEFAULT_EVERY_S


def on_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal a bar can redraw (not a pipe, a file, a dumb terminal or a CI
    log), as rich decides it; ``MLRELEASE_PROGRESS=log`` says no."""
    if os.environ.get(MODE_VAR, "").lower() == "log":
        return False
    from rich.console import Console

    console = Console(file=stream)
    return bool(console.is_terminal and not console.is_dumb_terminal)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``1 h 02 min``: an elapsed time or an ETA in a log line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def amount(value: float) -> str:
    """A count as a log line shows it: ``12``, or ``12.4`` for a part done (an epoch under way)."""
    shown = f"{value:.1f}"
    return shown[:-2] if shown.endswith(".0") else shown


def format_figures(figures: dict[str, Any]) -> str:
    """``train loss 0.1234, best epoch 12``: names with spaces for underscores, floats to 4 significant digits,
    None left out."""
    parts = []
    for name, value in figures.items():
        if value is None:
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{name.replace('_', ' ')} {shown}")
    return ", ".join(parts)


class Progress:
    """One piece of long work: how far it is (``completed`` of ``total`` ``unit``) and its current figures.

    The base class keeps the state and computes the ETA; :class:`LogProgress` and :class:`BarProgress` show it."""

    def __init__(self, label: str, total: float | None, unit: str, clock: Clock = time.monotonic) -> None:
        self.label, self.total, self.unit, self.clock = label, total, unit, clock
        self.completed = 0.0
        self.figures: dict[str, Any] = {}
        self.started = clock()

    def update(
        self, completed: float | None = None, *, advance: float = 0.0, total: float | None = None, **figures: Any
    ) -> None:
        """Move to ``completed`` (or by ``advance``), change the ``total`` if given, and merge ``figures``."""
        self.completed = (self.completed if completed is None else completed) + advance
        if total is not None:
            self.total = total
        self.figures.update(figures)
        self.show()

    def note(self, message: str) -> None:
        """A line that is always shown (a finished interval, a step's verdict), above a bar or as a log line."""
        raise NotImplementedError

    def show(self) -> None:
        """Show the state if it is time to (subclasses)."""

    def close(self) -> None:
        """The work ended: show its final state."""

    def elapsed(self) -> float:
        return self.clock() - self.started

    def eta(self) -> float | None:
        """Seconds left at the pace so far; None without a total or before any progress."""
        if self.total is None or self.completed <= 0:
            return None
        return max(0.0, self.elapsed() / self.completed * (self.total - self.completed))

    def count(self) -> str:
        """``12.4/52 epochs``: how far, of how much."""
        total = "" if self.total is None else f"/{amount(self.total)}"
        return f"{amount(self.completed)}{total} {self.unit}".rstrip()

    def line(self) -> str:
        """``train: 12/52 epochs (23%), train loss 0.12; 30 s elapsed, ETA 1 min 40 s``."""
        share = f" ({self.completed / self.total:.0%})" if self.total else ""
        figures = format_figures(self.figures)
        eta = self.eta()
        timing = f"{duration(self.elapsed())} elapsed" + ("" if eta is None else f", ETA {duration(eta)}")
        return f"{self.label}: {self.count()}{share}{', ' + figures if figures else ''}; {timing}"


class LogProgress(Progress):
    """A log line a second into the work, then at most every ``every_s`` seconds, and one at the end: what a CI log
    shows."""

    def __init__(
        self,
        label: str,
        total: float | None,
        unit: str,
        log: logging.Logger,
        every_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(label, total, unit, clock)
        self.log, self.every_s = log, every_s
        self.last_shown = self.started - every_s + min(FIRST_LINE_S, every_s)
        self.pending = False

    def show(self) -> None:
        self.pending = True
        if self.clock() - self.last_shown >= self.every_s:
            self._emit()

    def _emit(self) -> None:
        self.log.info("%s", self.line())
        self.last_shown, self.pending = self.clock(), False

    def note(self, message: str) -> None:
        self.log.info("%s: %s", self.label, message)
        self.last_shown = self.clock()  # a note is a line too: the next progress line comes every_s after it

    def close(self) -> None:
        if self.pending:
            self._emit()


class BarProgress(Progress):
    """A rich progress bar on ``stream``: label, bar, count, elapsed, ETA and the figures, redrawn in place a few
    times a second (rich's own thread) until :meth:`close`."""

    def __init__(self, label: str, total: float | None, unit: str, stream: TextIO, clock: Clock = time.monotonic):
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        super().__init__(label, total, unit, clock)
        self.rich = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[figures]}"),
            console=Console(file=stream),
            refresh_per_second=4,  # elapsed time and ETA keep moving while the work waits (a canary interval)
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.task = self.rich.add_task(label, total=total, count=self.count(), figures="")
        self.last_drawn = float("-inf")
        self.rich.start()

    def show(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last_drawn < BAR_REFRESH_S:
            return
        self.rich.update(
            self.task,
            completed=self.completed,
            total=self.total,
            count=self.count(),
            figures=format_figures(self.figures),
        )
        self.last_drawn = now

    def note(self, message: str) -> None:
        self.rich.console.print(f"{self.label}: {message}", markup=False, highlight=False)

    def close(self) -> None:
        self.show(force=True)
        self.rich.stop()


@contextlib.contextmanager
def progress(
    label: str,
    total: float | None = None,
    *,
    unit: str = "",
    log: logging.Logger | None = None,
    every_s: float | None = None,
    stream: TextIO | None = None,
    clock: Clock = time.monotonic,
) -> Iterator[Progress]:
    """Report the progress of one piece of work: a bar on a terminal, else a log line every ``every_s`` seconds
    (``MLRELEASE_PROGRESS_SECONDS``, default 5) on ``log``. The final state is shown when the block ends."""
    stream = stream if stream is not None else sys.stderr
    shown: Progress
    if on_terminal(stream):
        shown = BarProgress(label, total, unit, stream, clock)
    else:
        interval = every_s if every_s is not None else every_seconds()
        shown = LogProgress(label, total, unit, log or logging.getLogger(label), interval, clock)
    try:
        yield shown
    finally:
        shown.close()

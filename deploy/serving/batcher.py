"""Dynamic micro-batching: requests that arrive while the model is busy run together as one batch.

There is no time window: an idle batcher dispatches a request at once, and whatever queued up while the single
worker thread was busy is coalesced into the next call. Under load this yields large batches; with one client
it
adds no wait. The model runs off the event loop, on exactly one thread, so torch never competes with itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]
Outcome = np.ndarray | BaseException


class Sink(Protocol):
    """Takes a request's outcome the moment its batch completes (no future, no extra loop step)."""

    def deliver(self, outcome: Outcome) -> None: ...


Waiter = asyncio.Future[np.ndarray] | Sink
EWMA_WEIGHT = 0.2  # of the newest batch in the running estimate of a batch's duration


class RowErrors(Exception):
    """Raised by a predict function whose batch ran but some of whose rows have no valid answer: ``out`` is the
    whole batch's output, ``bad`` marks the rows, ``error(rows)`` is the exception for a part, given the indices
    of its bad rows within it. Only the parts holding bad rows fail, and nothing runs twice. ``answered``, if
    given, is called with the mask of the rows whose parts did get their answers (for counting them)."""

    def __init__(
        self,
        out: np.ndarray,
        bad: np.ndarray,
        error: Callable[[np.ndarray], BaseException],
        answered: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        super().__init__(f"{int(bad.sum())} of {len(bad)} rows have no valid answer")
        self.out = out
        self.bad = bad
        self.error = error
        self.answered = answered


def run_batch(predict: Predict, parts: list[np.ndarray]) -> list[Outcome]:
    """Run all parts as one batch; if that fails, run each alone so one bad part cannot fail the others (unless
    the call names its bad rows with RowErrors: then only their parts fail, from the same call).

    Results are views into the one output array (slices, no copies).
    """
    try:
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        out = predict(batch)
    except RowErrors as failed:
        return _split_rows(parts, failed)
    except Exception:
        if len(parts) == 1:
            raise
        return [_run_one(predict, part) for part in parts]
    if len(parts) == 1:
        return [out]
    results: list[Outcome] = []
    start = 0
    for part in parts:
        stop = start + len(part)
        results.append(out[start:stop])
        start = stop
    return results


def _split_rows(parts: list[np.ndarray], failed: RowErrors) -> list[Outcome]:
    """Each part's slice of the output, or its error when any of its rows is marked bad."""
    results: list[Outcome] = []
    answered = np.zeros(len(failed.bad), dtype=bool)
    start = 0
    for part in parts:
        stop = start + len(part)
        bad = np.flatnonzero(failed.bad[start:stop])
        results.append(failed.error(bad) if len(bad) else failed.out[start:stop])
        answered[start:stop] = not len(bad)
        start = stop
    if failed.answered is not None and answered.any():
        failed.answered(answered)
    return results


def _run_one(predict: Predict, part: np.ndarray) -> Outcome:
    try:
        return predict(part)
    except RowErrors as failed:
        return _split_rows([part], failed)[0]
    except Exception as exc:
        return exc


def _deliver(sink: Sink, outcome: Outcome) -> None:
    """Hand one outcome over; a failing sink is logged and cannot keep the rest of the batch from theirs."""
    try:
        sink.deliver(outcome)
    except Exception:
        log.exception("delivering a batch result failed")


class MicroBatcher:
    """Queue of (rows, future or Sink); one batch in flight at a time, on a dedicated thread.

    ``inline=True`` runs each coalesced batch on the event loop instead (one loop iteration later, so requests
    that arrived together still share a call): for models whose largest batch takes well under a millisecond,
    a thread hop costs more than the model, and on a busy machine it costs a scheduler wake-up or two.

    With ``max_wait_s``, ``overloaded()`` tells the caller when a new request would wait longer than that (load
    shedding); ``batch_s`` seeds the moving average of a batch's duration it estimates with.
    """

    def __init__(
        self,
        predict: Predict,
        max_rows: int,
        on_batch: Callable[[int, int], None] | None = None,
        initializer: Callable[[], None] | None = None,
        inline: bool = False,
        max_wait_s: float = 0.0,
        batch_s: float = 0.0,
    ) -> None:
        self._predict = predict
        self.inline = inline
        self._max_rows = max_rows
        self._on_batch = on_batch
        self._pending: list[tuple[np.ndarray, Waiter]] = []
        self._pending_rows = 0
        self._max_wait = max_wait_s  # admission budget (0: admit everything)
        self.batch_s = batch_s  # EWMA of a batch's duration, dispatch to completion (seeded by the caller)
        self._started = 0.0  # perf_counter() when the running batch was dispatched
        self._running = False
        self._closed = False
        self._idle: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model", initializer=initializer)

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities for ``rows``, computed in the next batch the worker runs."""
        return await self.submit(rows)

    def submit(self, rows: np.ndarray) -> asyncio.Future[np.ndarray]:
        """Queue ``rows`` for the next batch; the future resolves to their probabilities (no task needed)."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.enqueue(rows, future)
        return future

    def enqueue(self, rows: np.ndarray, waiter: Waiter) -> None:
        """Queue ``rows`` for the next batch; a Sink gets its outcome called straight from the batch's completion."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        self._pending.append((rows, waiter))
        self._pending_rows += len(rows)
        if not self._running:
            self._dispatch(asyncio.get_running_loop())

    def _take(self) -> list[tuple[np.ndarray, Waiter]]:
        """The oldest requests up to max_rows (always at least one)."""
        total, count = 0, 0
        for rows, _ in self._pending:
            if count and total + len(rows) > self._max_rows:
                break
            total += len(rows)
            count += 1
        taken, self._pending = self._pending[:count], self._pending[count:]
        self._pending_rows -= total
        return taken

    def overloaded(self) -> float:
        """0.0 if a new request may queue, else its expected wait: admission control (a refusal answers at once, so
        the client can go elsewhere) estimating the wait as the running batch plus each full batch of rows queued
        ahead, times the EWMA batch duration (under overload batches are full, so that is the full-batch time); a
        running batch already older than the budget (a stuck model call) refuses too."""
        if not self._running or not self._max_wait:
            return 0.0
        wait = (1 + self._pending_rows // self._max_rows) * self.batch_s
        if wait > self._max_wait:
            return wait
        age = time.perf_counter() - self._started
        return age if age > self._max_wait else 0.0

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._running = True
        self._started = time.perf_counter()
        if self._idle is not None:
            self._idle.clear()
        if self.inline:
            loop.call_soon(self._run_inline, loop)
            return
        taken = self._take()
        parts = [rows for rows, _ in taken]
        work = loop.run_in_executor(self._executor, run_batch, self._predict, parts)
        work.add_done_callback(lambda done: self._finish(loop, taken, done))

    def _run_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        """Inline mode: everything that queued up during this loop iteration runs now, as one call."""
        taken = self._take()
        try:
            outcomes = run_batch(self._predict, [rows for rows, _ in taken])
        except Exception as exc:
            outcomes = [exc] * len(taken)
        self._complete(loop, taken, outcomes)

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        taken: list[tuple[np.ndarray, Waiter]],
        done: asyncio.Future[list[Outcome]],
    ) -> None:
        cancelled = done.cancelled()  # exception() would raise, and no waiter of this batch would get an answer
        error = asyncio.CancelledError("the model thread's batch was cancelled") if cancelled else done.exception()
        self._complete(loop, taken, [error] * len(taken) if error is not None else done.result())

    def _complete(
        self,
        loop: asyncio.AbstractEventLoop,
        taken: list[tuple[np.ndarray, Waiter]],
        outcomes: list[Outcome],
    ) -> None:
        self.batch_s += EWMA_WEIGHT * (time.perf_counter() - self._started - self.batch_s)
        self._running = False
        if self._pending:
            self._dispatch(loop)  # first: on the model thread, the next batch runs while these answers are written
        for (_, waiter), outcome in zip(taken, outcomes, strict=True):
            if not isinstance(waiter, asyncio.Future):
                _deliver(waiter, outcome)
            elif waiter.done():
                continue
            elif isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)
        if self._on_batch is not None:
            self._on_batch(sum(len(rows) for rows, _ in taken), len(taken))
        if not self._running and not self._pending and self._idle is not None:
            self._idle.set()

    async def close(self) -> None:
        """Refuse new work, let queued and running batches finish, then stop the worker thread."""
        self._closed = True
        if self._running or self._pending:
            self._idle = asyncio.Event()
            await self._idle.wait()
        self._executor.shutdown(wait=True)

"""The circuit breaker around the model call (deploy/serving/breaker.py), on a hand-driven clock."""

from __future__ import annotations

from deploy.serving.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, reset_s: float = 5.0) -> tuple[CircuitBreaker, Clock, list[bool]]:
    clock = Clock()
    changes: list[bool] = []
    return CircuitBreaker(failures, reset_s, clock=clock, on_change=changes.append), clock, changes


def test_it_opens_after_the_threshold_of_consecutive_failures_and_refuses_until_the_reset() -> None:
    cb, clock, changes = breaker()
    for _ in range(2):
        cb.failure()
    assert cb.state == CLOSED and cb.allow() == 0.0 and changes == []
    cb.failure()
    assert cb.state == OPEN and not cb.closed and changes == [True] and cb.opens == 1
    clock.now += 2.0
    assert cb.allow() == 3.0 and cb.retry_after() == 3
    clock.now += 2.5
    assert cb.retry_after() == 1  # 0.5 s left: whole seconds, at least one


def test_a_success_between_failures_restarts_the_count() -> None:
    cb, _, changes = breaker()
    for _ in range(10):
        cb.failure()
        cb.failure()
        cb.success()
    assert cb.state == CLOSED and changes == [] and cb.opens == 0


def test_after_the_reset_one_probe_goes_through_and_its_success_closes_the_breaker() -> None:
    cb, clock, changes = breaker()
    for _ in range(3):
        cb.failure()
    clock.now += 5.0
    assert cb.allow() == 0.0 and cb.state == HALF_OPEN  # the probe
    assert cb.allow() == 5.0  # everyone else waits for its outcome
    cb.success()
    assert cb.state == CLOSED and cb.allow() == 0.0 and changes == [True, False]


def test_a_failed_probe_opens_it_again_for_another_reset_and_counts_as_an_open() -> None:
    cb, clock, changes = breaker()
    for _ in range(3):
        cb.failure()
    clock.now += 5.0
    assert cb.allow() == 0.0
    cb.failure()
    assert cb.state == OPEN and cb.opens == 2 and changes == [True, True]
    assert cb.allow() == 5.0


def test_a_probe_that_never_reports_is_replaced_after_another_reset() -> None:
    cb, clock, _ = breaker(reset_s=2.0)
    for _ in range(3):
        cb.failure()
    clock.now += 2.0
    assert cb.allow() == 0.0  # a probe that is lost (its request never reached the model)
    clock.now += 1.0
    assert cb.allow() == 1.0
    clock.now += 1.0
    assert cb.allow() == 0.0 and cb.state == HALF_OPEN


def test_failures_while_open_keep_it_open_from_the_latest() -> None:
    """Requests queued before it opened still fail: each pushes the probe back (the model is still failing)."""
    cb, clock, changes = breaker()
    for _ in range(3):
        cb.failure()
    clock.now += 4.0
    cb.failure()
    assert cb.allow() == 5.0 and cb.opens == 1 and changes == [True]


def test_zero_failures_disables_it() -> None:
    cb, _, changes = breaker(failures=0)
    for _ in range(100):
        cb.failure()
    assert cb.closed and cb.allow() == 0.0 and changes == []

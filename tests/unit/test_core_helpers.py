"""The shared probe, wait and process helpers, without starting anything (answers from a real server are in
tests/integration/test_probe.py)."""

from __future__ import annotations

import os

import pytest

from mlrelease.core.http import probe, wait_until
from mlrelease.core.net import free_port
from mlrelease.core.proc import children, command_line, is_our_server, pid_alive

GONE = 2**22 + 5  # above the kernel's default pid_max: no such process


def test_a_probe_of_a_port_nobody_listens_on_says_why_with_status_0() -> None:
    status, reason = probe(f"http://127.0.0.1:{free_port()}/ready", timeout=1.0)
    assert status == 0 and "refused" in reason.lower()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "127.0.0.1:80/ready"])
def test_a_probe_takes_only_http_urls(url: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        probe(url)


def test_wait_until_returns_as_soon_as_the_check_passes() -> None:
    answers = iter([False, False, True, True])
    calls: list[str] = []

    def check() -> bool:
        calls.append("check")
        return next(answers)

    assert wait_until(check, timeout=60, interval=0.001, interrupt=lambda: calls.append("interrupt"))
    assert calls == ["interrupt", "check"] * 3  # interrupt before every check, no check after success


def test_wait_until_checks_once_and_gives_up_after_the_timeout() -> None:
    calls: list[int] = []

    def never() -> bool:
        calls.append(1)
        return False

    assert not wait_until(never, timeout=0)
    assert calls == [1]


def test_an_interrupt_or_a_failing_check_stops_the_wait() -> None:
    class Stop(RuntimeError):
        pass

    def interrupt() -> None:
        raise Stop("a rollback asked for the lock")

    with pytest.raises(Stop):
        wait_until(lambda: pytest.fail("checked after the interrupt raised"), timeout=60, interrupt=interrupt)

    def broken() -> bool:
        raise LookupError("the server exited")

    with pytest.raises(LookupError):
        wait_until(broken, timeout=60)


def test_pid_alive_and_our_server_on_psutil() -> None:
    me = os.getpid()
    assert pid_alive(me) and not pid_alive(GONE) and not pid_alive(None) and not pid_alive(0)
    assert command_line(me) and command_line(GONE) == []
    assert children(GONE) == []
    assert not is_our_server(me, 8080)  # this test process is no deploy.serving server
    assert not is_our_server(GONE, 8080)

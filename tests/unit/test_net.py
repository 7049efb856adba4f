"""Stopping server processes: SIGTERM first, SIGKILL for one that ignores it, the whole group when asked."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from mlrelease.core.net import free_port, stop_process

IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
)


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # the handler is installed
    assert stop_process(proc, timeout=0.5) == -signal.SIGKILL


def test_group_stop_reaches_the_children() -> None:
    shell = "sleep 60 & echo $!; wait"
    proc = subprocess.Popen(["bash", "-c", shell], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    assert stop_process(proc, timeout=5, group=True) is not None
    deadline = time.monotonic() + 10  # the orphaned child is reaped by init shortly after it dies
    while (
        time.monotonic() < deadline and subprocess.run(["kill", "-0", str(child)], capture_output=True).returncode == 0
    ):
        time.sleep(0.05)
    assert subprocess.run(["kill", "-0", str(child)], capture_output=True).returncode != 0  # the child is gone too


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_credentials_go_only_to_https_or_loopback() -> None:
    from mlrelease.core.net import safe_for_secrets

    for url in [
        "http://127.0.0.1:8080",
        "http://127.5.0.1/x",
        "http://localhost:1",
        "http://[::1]:9",
        "https://staging.example.com",
    ]:
        assert safe_for_secrets(url), url
    for url in ["http://staging.example.com", "http://10.0.0.5:8080", "ftp://127.0.0.1", "127.0.0.1:8080", ""]:
        assert not safe_for_secrets(url), url

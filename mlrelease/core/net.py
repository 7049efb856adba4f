"""Loopback helpers shared by the server launchers (deployment targets, load test, image smoke test, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bind to port 0, then release it for the server to take)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_loopback_http(url: str) -> bool:
    """Whether ``url`` is plain http to a loopback address (127.0.0.0/8, ::1 or localhost)."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http" or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_for_secrets(url: str) -> bool:
    """Whether a credential may be sent to ``url``: over https, or over plain http to a loopback address only."""
    from urllib.parse import urlsplit

    return urlsplit(url).scheme == "https" or is_loopback_http(url)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20, group: bool = False) -> int | None:
    """SIGTERM (a server drains its in-flight requests), then SIGKILL if it is still running after ``timeout``.

    ``group``: signal the process group the process leads (started with ``start_new_session=True``), so
    children such as a container runtime's payload stop too. Returns the exit code (None if it would not die).
    """

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            break
        send(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
    if group:
        send(signal.SIGKILL)  # members that outlived the leader (a runtime that left its payload behind)
    return process.returncode

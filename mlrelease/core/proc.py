"""Process checks on psutil: is a pid alive, and is it still the server we started on that port (pid reuse)."""

from __future__ import annotations

import psutil

SERVER_MARKER = "deploy.serving"  # the module every model server runs as (``python -m deploy.serving``)


def pid_alive(pid: int | None) -> bool:
    """True when the process exists and is not a zombie (one we may not inspect counts as alive)."""
    if not pid:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def command_line(pid: int) -> list[str]:
    """The process's arguments (a process title set by the program, as nginx does, included); [] when gone."""
    try:
        return list(psutil.Process(pid).cmdline())
    except psutil.Error:
        return []


def is_our_server(pid: int, port: int, marker: str = SERVER_MARKER) -> bool:
    """Guard against pid reuse: ``pid`` must be a ``marker`` process given ``port`` on its command line."""
    args = command_line(pid)
    return marker in args and str(port) in args


def children(pid: int) -> list[int]:
    """Pids of the process's direct children; [] when it is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def listeners(port: int) -> list[int]:
    """Pids listening on a TCP port of this machine (those this user may see)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return []
    return sorted(
        {c.pid for c in connections if c.pid and c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
    )

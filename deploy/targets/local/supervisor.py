"""supervisord as the local target's process supervisor: it restarts a dead replica by itself, between commands.

One supervisord per state folder, started on first use (it daemonizes and outlives the command), answering
XML-RPC on a unix socket only its user can open. Each replica is a program of its own (``r<port>``), added and
removed at run time through ``reloadConfig`` and ``add/removeProcessGroup``, so the supervisor never restarts for
a deploy. supervisord's own policy gives the backoff and the give-up: a replica that exits within ``startsecs`` of
a start is retried after 1, 2, 3 … s and left FATAL after ``startretries`` tries; one that ran longer is restarted
at once (the ``kill -9`` of a healthy replica).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import socket
import subprocess
import sys
import tempfile
import xmlrpc.client  # nosec B411  # our own supervisord's answers, on a socket only this user opens
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.targets.base import DeploymentError
from mlrelease.core.files import atomic_write
from mlrelease.core.http import wait_until

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
MAX_SOCKET_PATH = 100  # a unix socket path is at most 107 bytes on Linux
# supervisord's fault codes (supervisor.xmlrpc.Faults) this module expects
BAD_NAME, NOT_RUNNING, ALREADY_ADDED, STILL_RUNNING = 10, 70, 90, 91
RUNNING_STATES = frozenset({"STARTING", "RUNNING"})


@dataclass(frozen=True)
class Program:
    """One supervised process: its command, the file holding its environment, its log and restart policy."""

    name: str
    command: list[str]
    log_path: Path
    directory: Path | None = None
    startsecs: int = 10
    startretries: int = 3
    stopwaitsecs: int = 15
    stopasgroup: bool = True  # SIGTERM to the whole process group (False: to the program's own process only)


@dataclass(frozen=True)
class ProcessInfo:
    """What supervisord says about a program: its state (RUNNING, BACKOFF, FATAL, …), pid and restart count."""

    name: str
    state: str
    pid: int
    description: str
    spawn_error: str = ""
    uptime: float = 0.0  # seconds since its last start

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES and self.pid > 0


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over supervisord's unix socket, with a timeout (a hung supervisor never hangs a command)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self._path, self._timeout)


def socket_path(folder: Path) -> Path:
    """The control socket: in the folder, or under the temp folder when that path is too long for a socket."""
    inside = folder / "supervisor.sock"
    if len(str(inside)) <= MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mlrelease-supervisor-{os.getuid()}-{digest}.sock"


class Supervisor:
    """The supervisord of one state folder: start it on demand, add, inspect, stop and remove programs."""

    def __init__(self, state_dir: Path, timeout_s: float = 30.0) -> None:
        self.folder = Path(state_dir).resolve() / "supervisor"
        self.conf = self.folder / "supervisord.conf"
        self.programs = self.folder / "programs"
        self.socket = socket_path(self.folder)
        self.pid_file = self.folder / "supervisord.pid"
        self.timeout_s = timeout_s

    # ----- the daemon ------------------------------------------------------------------------------------------
    def _proxy(self, timeout: float | None = None) -> Any:
        transport = _UnixTransport(str(self.socket), timeout or self.timeout_s)
        return xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=transport, allow_none=True)

    def answering(self) -> bool:
        """True when supervisord runs and answers on its socket."""
        try:
            return self._proxy(timeout=2.0).supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def ensure(self, env: dict[str, str]) -> bool:
        """Start supervisord unless it answers; True when it had to be started (its programs need re-adding)."""
        if self.answering():
            return False
        self.programs.mkdir(parents=True, exist_ok=True)
        atomic_write(self.conf, self._render())
        self.socket.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, cwd=self.folder)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeploymentError(
                f"could not start supervisord ({exc}); see {self.folder / 'supervisord.log'}"
            ) from exc
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip().splitlines()
            raise DeploymentError(f"supervisord did not start: {said[-1] if said else result.returncode}")
        if not wait_until(self.answering, START_TIMEOUT_S, interval=0.05):
            raise DeploymentError(f"supervisord did not answer within {START_TIMEOUT_S:g} s; see {self.folder}")
        log.info("started supervisord for %s", self.folder.parent)
        return True

    def _render(self) -> str:
        """supervisord's config: daemon, private unix socket, RPC, and one included file per program."""
        return "\n".join(
            [
                "; written by deploy/targets/local/supervisor.py; programs are added at run time",
                "[supervisord]",
                f"logfile={self.folder / 'supervisord.log'}",
                "logfile_maxbytes=5MB",
                "logfile_backups=1",
                f"pidfile={self.pid_file}",
                f"childlogdir={self.folder}",
                "nodaemon=false",
                "silent=true",
                "",
                "[unix_http_server]",
                f"file={self.socket}",
                "chmod=0700",
                "",
                "[rpcinterface:supervisor]",
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
                "",
                "[include]",
                f"files={self.programs}/*.conf",
                "",
            ]
        )

    def shutdown(self) -> None:
        """Stop supervisord (its programs first, each with its stop signal and wait)."""
        if not self.answering():
            return
        pid = self._pid()
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self._proxy().supervisor.shutdown()
        if pid is not None:
            wait_until(lambda: not _alive(pid), self.timeout_s, interval=0.05)

    def _pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    # ----- programs --------------------------------------------------------------------------------------------
    def add(self, program: Program) -> None:
        """Write the program's config and have supervisord start it (autostart); an existing one is replaced."""
        self.remove(program.name)
        atomic_write(self.programs / f"{program.name}.conf", _program_section(program))
        rpc = self._proxy()
        rpc.supervisor.reloadConfig()
        try:
            rpc.supervisor.addProcessGroup(program.name)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != ALREADY_ADDED:
                raise DeploymentError(f"supervisord refused {program.name}: {fault.faultString}") from fault

    def stop(self, name: str, wait: bool = True) -> None:
        """Stop a program (its stop signal, then SIGKILL after its wait); gone or stopped already: nothing."""
        try:
            self._proxy().supervisor.stopProcess(name, wait)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode not in (BAD_NAME, NOT_RUNNING):
                raise DeploymentError(f"supervisord could not stop {name}: {fault.faultString}") from fault
        except OSError:
            return  # no supervisor: nothing of it runs

    def remove(self, name: str, wait: bool = True) -> None:
        """Stop a program and forget it (config file too); with ``wait=False`` the stop is only begun."""
        if not self.answering():
            (self.programs / f"{name}.conf").unlink(missing_ok=True)
            return
        self.stop(name, wait)
        (self.programs / f"{name}.conf").unlink(missing_ok=True)
        if wait:
            self._remove_group(name)
        self.prune()

    def remove_many(self, names: list[str], wait: bool = True) -> None:
        """Stop programs together (their drains overlap) and forget them; ``wait=False`` only begins the stops."""
        if not names:
            return
        if not self.answering():
            for name in names:
                (self.programs / f"{name}.conf").unlink(missing_ok=True)
            return
        for name in names:
            self.stop(name, wait=False)
            (self.programs / f"{name}.conf").unlink(missing_ok=True)
            (self.folder / "env" / f"{name}.json").unlink(missing_ok=True)
        if wait:
            wait_until(lambda: not any(self._running(name) for name in names), self.timeout_s, interval=0.05)
            for name in names:
                self._remove_group(name)
        self.prune()

    def _running(self, name: str) -> bool:
        info = self.info(name)
        return info is not None and info.state in ("STARTING", "RUNNING", "BACKOFF", "STOPPING")

    def _remove_group(self, name: str) -> None:
        with contextlib.suppress(xmlrpc.client.Fault):
            self._proxy().supervisor.removeProcessGroup(name)

    def prune(self) -> None:
        """Forget stopped programs whose config file was removed (stops begun without waiting)."""
        for info in self.all():
            if not info.running and not (self.programs / f"{info.name}.conf").exists():
                self._remove_group(info.name)

    def start(self, name: str) -> None:
        """Start a stopped or given-up (FATAL) program again, without waiting for it."""
        try:
            self._proxy().supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            raise DeploymentError(f"supervisord could not start {name}: {fault.faultString}") from fault

    def info(self, name: str) -> ProcessInfo | None:
        """The program's state, None when supervisord does not know it (or does not run)."""
        try:
            raw = self._proxy(timeout=5.0).supervisor.getProcessInfo(name)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == BAD_NAME:
                return None
            raise
        except OSError:
            return None
        return _info(raw)

    def all(self) -> list[ProcessInfo]:
        """Every program supervisord knows, [] when it does not run."""
        try:
            return [_info(raw) for raw in self._proxy(timeout=5.0).supervisor.getAllProcessInfo()]
        except (OSError, xmlrpc.client.Error):
            return []


def _info(raw: dict[str, Any]) -> ProcessInfo:
    return ProcessInfo(
        name=raw["name"],
        state=raw["statename"],
        pid=int(raw.get("pid") or 0),
        description=raw.get("description", ""),
        spawn_error=raw.get("spawnerr", ""),
        uptime=max(0.0, float(raw.get("now", 0)) - float(raw.get("start", 0))) if raw.get("start") else 0.0,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _percent(value: str) -> str:
    """A config value for supervisord, which %-interpolates them."""
    return value.replace("%", "%%")


def _quote(word: str) -> str:
    """A command-line word for supervisord (shlex-split, then %-interpolated)."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return _percent(f'"{escaped}"')


def _program_section(program: Program) -> str:
    """The ``[program:…]`` file of one replica: autostart, autorestart, backoff and give-up, drain on stop."""
    return "\n".join(
        [
            f"[program:{program.name}]",
            "command=" + " ".join(_quote(word) for word in program.command),
            *([f"directory={_percent(str(program.directory))}"] if program.directory else []),
            "autostart=true",
            "autorestart=true",
            f"startsecs={program.startsecs}",
            f"startretries={program.startretries}",
            "stopsignal=TERM",
            f"stopwaitsecs={program.stopwaitsecs}",
            f"stopasgroup={'true' if program.stopasgroup else 'false'}",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_percent(str(program.log_path))}",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=1",
            "",
        ]
    )

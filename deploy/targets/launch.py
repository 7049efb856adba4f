"""``python -m deploy.targets.launch ENV_FILE -- COMMAND…``: become COMMAND in ENV_FILE's environment.

A supervised replica starts through this shim so that it runs in the exact environment of the command that
deployed it (settings, secrets, paths), not in the supervisor's, which was fixed when the supervisor started.
The file is JSON, readable by its owner only; ``exec`` keeps the pid, so the supervisor watches the server itself.

Replicas of one slot take turns loading (``MLRELEASE_STARTUP_LOCK``, a lock file per slot): when the supervisor
restarts them all at once, the first is ready about as soon as a lone replica would be, instead of all of them late,
sharing the CPU. The lock's descriptor passes through ``exec`` (``MLRELEASE_STARTUP_LOCK_FD``); the server closes it
once its first load ends, or its exit does. A turn not given within ``TURN_WAIT_S`` is taken anyway.

``--supervise`` (a replica of the container runtime): run COMMAND, a container engine's, as a child instead, and pass
SIGTERM and SIGINT to the model server inside it, so it drains (``buildah run`` itself answers SIGTERM by killing
its command at once); the shim exits with COMMAND's status. The server inside takes its turn there, through this
same module, on the lock file mounted into the container.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

MODULE = "deploy.targets.launch"  # run as ``python -m``, where __name__ is "__main__"
STARTUP_LOCK = "MLRELEASE_STARTUP_LOCK"
STARTUP_LOCK_FD = "MLRELEASE_STARTUP_LOCK_FD"
TURN_WAIT_S = 15.0  # a sibling stuck loading (it has ready_timeout) must not hold this one back longer


def take_turn(env: dict[str, str], wait_s: float = TURN_WAIT_S) -> None:
    """Wait for the slot's start-up lock named in ``env`` and hand its descriptor on to the server."""
    path = env.pop(STARTUP_LOCK, "")
    if not path:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return
            time.sleep(0.02)
    os.set_inheritable(fd, True)
    env[STARTUP_LOCK_FD] = str(fd)


def server_inside(pid: int) -> int | None:
    """The model server among ``pid``'s descendants (the engine's own processes sit between), None before it runs."""
    import psutil  # the host side only: inside the image this module imports nothing but the standard library

    from mlrelease.core.proc import SERVER_MARKER

    try:
        for child in psutil.Process(pid).children(recursive=True):
            if SERVER_MARKER in child.cmdline() and MODULE not in child.cmdline():
                return int(child.pid)
    except psutil.Error:
        return None
    return None


def supervise(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` as a child, pass SIGTERM/SIGINT to the server inside it (to the child itself before the
    server runs), and return the child's exit status."""
    child = subprocess.Popen(command, env=env)  # the target's own engine command

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server_inside(child.pid) or child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    """Read the environment file and exec the command after ``--`` (exit 2 naming what is wrong otherwise)."""
    supervised = bool(argv) and argv[0] == "--supervise"
    argv = argv[1:] if supervised else argv
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m deploy.targets.launch [--supervise] ENV_FILE -- COMMAND...\n")
        return 2
    try:
        with open(argv[0], encoding="utf-8") as handle:
            env = json.load(handle)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"cannot read the environment file {argv[0]}: {exc}\n")
        return 2
    env = {str(k): str(v) for k, v in env.items()}
    if supervised:
        return supervise(argv[2:], env)
    take_turn(env)
    os.execve(argv[2], argv[2:], env)  # noqa: S606
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

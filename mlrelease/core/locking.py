"""One promotion at a time: an OS file lock (released by the kernel if its holder dies, even on kill -9)
plus a note naming the holder, so a second caller is told who holds it and since when."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "promotion.lock"
HOLDER_FILE = "promotion.lock.holder"


class PromotionLocked(RuntimeError):
    """Another promotion or rollback holds the lock."""


def _holder(state_dir: Path) -> str:
    try:
        info = json.loads((state_dir / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return "an unknown process"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
    return f"`{info.get('command', '?')}` by {info.get('by', '?')} (pid {info.get('pid', '?')}) since {since}"


@contextmanager
def promotion_lock(state_dir: Path, command: str, by: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the promotion lock for the block; raise PromotionLocked naming the holder when it is taken."""
    from filelock import FileLock, Timeout

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(state_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise PromotionLocked(
            f"another promotion is running: {_holder(state_dir)}. Wait for it to finish (`mlrelease status`), "
            "or stop that process; its lock is released as soon as it exits"
        ) from None
    try:
        note = {"command": command, "by": by, "pid": os.getpid(), "since": time.time()}
        (state_dir / HOLDER_FILE).write_text(json.dumps(note))
        yield
    finally:
        (state_dir / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()

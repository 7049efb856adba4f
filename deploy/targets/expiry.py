"""End of the rollback window: stop the warm previous production version when its time is up, even if no
command runs by then.

The local target starts one detached watcher per slot given an expiry (``python -m deploy.targets.expiry``). It
sleeps until the slot's ``expires_at``, takes the promotion lock (so it never races a promotion or a rollback),
and stops the slot only if it is still the same process, still expired and still without traffic. A rollback
that took the slot over, a newer promotion that replaced it, or a removed state folder simply ends the watcher; so
does an interrupted rollback left in the journal (it may be on its way to this very slot).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from deploy.targets.process import spawn_detached

log = logging.getLogger("deploy.targets.expiry")

LOCK_RETRY_S = 30.0


def start_watch(state_dir: Path, environment: str, slot: str, pid: int) -> None:
    """Start the detached watcher for a slot that has an expiry (its output goes to the state's logs folder)."""
    logs = Path(state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "deploy.targets.expiry",
        "--state-dir",
        str(state_dir),
        "--environment",
        environment,
        "--slot",
        slot,
        "--pid",
        str(pid),
    ]
    spawn_detached(cmd, logs / "expiry.log")


def due_in(state_dir: Path, environment: str, slot: str, pid: int) -> float | None:
    """Seconds until the watched slot expires (<= 0: due now); None when it is no longer this watcher's job."""
    from deploy.targets.state import StateStore

    store = StateStore(state_dir)
    if not store.path.is_file():
        return None
    env = store.load().environments.get(environment)
    found = env.slots.get(slot) if env else None
    if env is None or found is None or found.pid != pid or found.expires_at is None or env.weight(slot) > 0:
        return None
    return found.expires_at - time.time()


def expire_once(state_dir: Path, environment: str, slot: str, pid: int) -> str | None:
    """Under the lock: stop the slot if it is due; return what happened, or None to keep waiting."""
    from deploy.targets.local import LocalTarget
    from mlrelease.core.locking import PromotionLocked, promotion_lock

    try:
        with promotion_lock(state_dir, f"expire {environment}/{slot}", "rollback-window", wait_s=LOCK_RETRY_S):
            left = due_in(state_dir, environment, slot, pid)
            if left is None:
                return "nothing to do: the slot was taken over, replaced or removed"
            if left > 0:
                return None
            pending = _interrupted_rollback(state_dir)
            if pending is not None:
                return pending
            LocalTarget(state_dir).stop(environment, slot)
            return f"stopped {environment}/{slot} (pid {pid}): its rollback window ended"
    except PromotionLocked:
        return None  # a promotion is running: try again after it


def _interrupted_rollback(state_dir: Path) -> str | None:
    """A rollback journaled and not finished (this watcher holds the lock, so its process died) may be on its way
    to this warm version: stopping it would make the re-run start that version cold. Said, and left to the incident:
    once the rollback is finished, the next command's reconcile stops the slot if it is still expired."""
    from deploy.targets.state import StateStore

    op = StateStore(state_dir).load().operation
    if op is None or op.command != "rollback":
        return None
    return (
        f"kept: an interrupted rollback to version {op.version} is journaled (scripts/rollback.sh finishes it; "
        "the next command's reconcile stops this slot afterwards if its window is over)"
    )


def watch(state_dir: Path, environment: str, slot: str, pid: int) -> str:
    """Sleep until the slot is due (its expiry may move), then expire it; return what happened."""
    while True:
        left = due_in(state_dir, environment, slot, pid)
        if left is None:
            return "nothing to do: the slot was taken over, replaced or removed"
        if left > 0:
            time.sleep(min(left, 60.0))  # re-read the state at least every minute
            continue
        done = expire_once(state_dir, environment, slot, pid)
        if done is not None:
            return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.targets.expiry", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--environment", default="production")
    parser.add_argument("--slot", default="previous")
    parser.add_argument("--pid", type=int, required=True, help="The slot's server process this watcher is for")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("watching %s/%s (pid %d)", args.environment, args.slot, args.pid)
    log.info("%s", watch(args.state_dir, args.environment, args.slot, args.pid))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End of the rollback window: stop the warm previous production version when its time is up, even if no
command runs by then.

The local target starts one detached watcher per slot given an expiry (``python -m deploy.targets.local.expiry``).
It sleeps until the slot's ``expires_at``, takes the promotion lock (so it never races a promotion or a rollback),
and stops the slot only if it is still the same slot (by an id kept across renames and restarts), still expired,
still without traffic and expiry is not on hold. A rollback that took the slot over, a newer promotion that
replaced it, or a removed state folder simply ends the watcher. While expiry is on hold (a rollback under way may
be going to this very slot) the watcher keeps the slot, says why in its log, and stops it once the hold is lifted
if it is still due.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from deploy.targets.local.state import StateStore
from deploy.targets.local.target import LocalTarget
from mlrelease.core.locking import PromotionLocked, promotion_lock

log = logging.getLogger("deploy.targets.local.expiry")

LOCK_RETRY_S = 30.0
HOLD_POLL_S = 5.0  # how often a held watcher looks whether the hold was lifted
NOT_MINE = "nothing to do: the slot was taken over, replaced or removed"


def due_in(state_dir: Path, environment: str, slot: str, uid: str) -> float | None:
    """Seconds until the watched slot expires (<= 0: due now); None when it is no longer this watcher's job."""
    store = StateStore(state_dir)
    if not store.path.is_file():
        return None
    env = store.load().environments.get(environment)
    found = env.slots.get(slot) if env else None
    if env is None or found is None or found.uid != uid or found.expires_at is None or env.weight(slot) > 0:
        return None
    return found.expires_at - time.time()


def held(state_dir: Path) -> str | None:
    """Why expiry is on hold, None when it is not."""
    store = StateStore(state_dir)
    return store.load().expiry_hold if store.path.is_file() else None


def expire_once(state_dir: Path, environment: str, slot: str, uid: str) -> str | None:
    """Under the lock: stop the slot if it is due and expiry is not held; say what happened, None to keep waiting."""
    try:
        with promotion_lock(state_dir, f"expire {environment}/{slot}", "rollback-window", wait_s=LOCK_RETRY_S):
            left = due_in(state_dir, environment, slot, uid)
            if left is None:
                return NOT_MINE
            if left > 0 or held(state_dir) is not None:
                return None
            LocalTarget(state_dir).stop(environment, slot)
            return f"stopped {environment}/{slot} ({uid}): its rollback window ended"
    except PromotionLocked:
        return None  # a promotion is running: try again after it


def watch(
    state_dir: Path,
    environment: str,
    slot: str,
    uid: str,
    sleep: Callable[[float], None] = time.sleep,
    hold_poll_s: float = HOLD_POLL_S,
) -> str:
    """Sleep until the slot is due (its expiry may move), wait out any hold, then expire it; say what happened."""
    said: str | None = None
    while True:
        left = due_in(state_dir, environment, slot, uid)
        if left is None:
            return NOT_MINE
        if left > 0:
            sleep(min(left, 60.0))  # re-read the state at least every minute
            continue
        hold = held(state_dir)
        if hold is not None:
            if hold != said:
                log.info("kept: %s", hold)
                said = hold
            sleep(hold_poll_s)
            continue
        done = expire_once(state_dir, environment, slot, uid)
        if done is not None:
            return done


def main(argv: list[str] | None = None) -> int:
    """Watch one slot until its window ends or it is no longer this watcher's job."""
    parser = argparse.ArgumentParser(prog="python -m deploy.targets.local.expiry", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--environment", default="production")
    parser.add_argument("--slot", default="previous")
    parser.add_argument("--uid", required=True, help="The slot (by its id, kept across renames) this watcher is for")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("watching %s/%s (%s)", args.environment, args.slot, args.uid)
    log.info("%s", watch(args.state_dir, args.environment, args.slot, args.uid))
    return 0


if __name__ == "__main__":
    sys.exit(main())

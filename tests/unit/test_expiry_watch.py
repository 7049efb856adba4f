"""The rollback window's watcher: it stops an expired warm slot, but not while expiry is on hold (a rollback
under way may be going to that slot); once the hold is lifted it stops the slot if it is still due."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from deploy.targets.local import LocalTarget
from deploy.targets.local.expiry import expire_once, watch
from deploy.targets.local.state import Slot, StateStore

GONE = 2**22 + 5  # no such process: stopping it sends nothing
UID = "warm-slot-1"  # the watched slot's id
HOLD = "a rollback to version 2 is journaled (scripts/rollback.sh finishes it)"


def _expired_warm_slot(state_dir: Path) -> StateStore:
    store = StateStore(state_dir)
    state = store.load()
    state.env("staging").slots["previous"] = Slot(
        version="2", port=1, pid=GONE, model_name="m", bundle_dir="/b", expires_at=time.time() - 1, uid=UID
    )
    store.save(state)
    return store


def test_an_expired_warm_slot_is_stopped(tmp_path: Path) -> None:
    store = _expired_warm_slot(tmp_path)
    said = expire_once(tmp_path, "staging", "previous", UID)
    assert said is not None and "rollback window ended" in said
    assert "previous" not in store.load().env("staging").slots


def test_a_held_slot_is_kept_and_stopped_once_the_hold_is_lifted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _expired_warm_slot(tmp_path)
    target = LocalTarget(tmp_path, routed=())
    target.hold_expiry(HOLD)
    assert expire_once(tmp_path, "staging", "previous", UID) is None  # kept: keep waiting
    assert store.load().env("staging").slots["previous"].version == "2"
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the watcher's pause: the slot is still there; the rollback then ends
        slept.append(seconds)
        assert store.load().env("staging").slots["previous"].version == "2"
        if len(slept) == 2:
            target.hold_expiry(None)

    with caplog.at_level(logging.INFO, logger="deploy.targets.local.expiry"):
        said = watch(tmp_path, "staging", "previous", UID, sleep=sleep, hold_poll_s=7.0)
    assert slept == [7.0, 7.0]
    assert [r.getMessage() for r in caplog.records] == [f"kept: {HOLD}"]  # said once, not at every look
    assert "rollback window ended" in said
    assert "previous" not in store.load().env("staging").slots


def test_a_slot_taken_over_ends_the_watcher(tmp_path: Path) -> None:
    store = _expired_warm_slot(tmp_path)
    state = store.load()
    state.env("staging").weights = {"previous": 100.0}  # a rollback routed to it
    store.save(state)
    said = watch(tmp_path, "staging", "previous", UID, sleep=lambda s: pytest.fail("nothing to wait for"))
    assert "taken over" in said
    assert store.load().env("staging").slots["previous"].version == "2"


def test_reconcile_obeys_the_hold_too(tmp_path: Path) -> None:
    """A live warm slot past its window stays while held; the first reconcile after the hold stops it."""
    import os

    store = StateStore(tmp_path)
    state = store.load()
    # this test process as the slot's pid: alive (so not restarted) and not a server (so never signalled)
    state.env("staging").slots["previous"] = Slot(
        version="2", port=1, pid=os.getpid(), model_name="m", bundle_dir="/b", expires_at=time.time() - 1
    )
    store.save(state)
    target = LocalTarget(tmp_path, routed=())
    target.hold_expiry(HOLD)
    assert target.reconcile() == []
    assert target.slot("staging", "previous") is not None
    target.hold_expiry(None)
    assert target.reconcile() == ["stopped expired staging/previous (version 2)"]
    assert target.slot("staging", "previous") is None

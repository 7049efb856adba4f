"""The rollback window's watcher: it stops an expired warm slot, but not while an interrupted rollback is journaled."""

from __future__ import annotations

import time
from pathlib import Path

from deploy.targets.expiry import expire_once
from deploy.targets.state import Operation, Slot, StateStore

GONE = 2**22 + 5  # no such process: stopping it sends nothing


def _expired_warm_slot(state_dir: Path) -> StateStore:
    store = StateStore(state_dir)
    state = store.load()
    state.env("staging").slots["previous"] = Slot(
        version="2", port=1, pid=GONE, model_name="m", bundle_dir="/b", expires_at=time.time() - 1
    )
    store.save(state)
    return store


def test_an_expired_warm_slot_is_stopped(tmp_path: Path) -> None:
    store = _expired_warm_slot(tmp_path)
    said = expire_once(tmp_path, "staging", "previous", GONE)
    assert said is not None and "rollback window ended" in said
    assert "previous" not in store.load().env("staging").slots


def test_a_journaled_rollback_keeps_the_warm_slot_it_may_be_going_to(tmp_path: Path) -> None:
    store = _expired_warm_slot(tmp_path)
    state = store.load()
    state.operation = Operation(command="rollback", version="2", pid=GONE, by="oncall", from_version="3")
    store.save(state)
    said = expire_once(tmp_path, "staging", "previous", GONE)
    assert said is not None and "interrupted rollback to version 2" in said
    assert store.load().env("staging").slots["previous"].version == "2"

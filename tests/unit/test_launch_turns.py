"""The replicas of one slot load in turn: the launch shim's start-up lock, handed on to the server."""

from __future__ import annotations

import os
from pathlib import Path

from deploy.targets.launch import STARTUP_LOCK, STARTUP_LOCK_FD, take_turn


def test_a_second_replica_waits_for_the_first_to_finish_loading(tmp_path: Path) -> None:
    lock = str(tmp_path / "production-stable.start.lock")
    first = {STARTUP_LOCK: lock, "KEEP": "1"}
    take_turn(first, wait_s=1.0)
    assert STARTUP_LOCK not in first and first["KEEP"] == "1"
    held = int(first[STARTUP_LOCK_FD])
    assert os.get_inheritable(held)  # it must survive exec into the server

    second = {STARTUP_LOCK: lock}
    take_turn(second, wait_s=0.1)  # the first still loads: the turn is taken anyway after the wait, with no lock
    assert STARTUP_LOCK_FD not in second and STARTUP_LOCK not in second

    os.close(held)  # the first server's load ended
    third = {STARTUP_LOCK: lock}
    take_turn(third, wait_s=1.0)
    assert STARTUP_LOCK_FD in third
    os.close(int(third[STARTUP_LOCK_FD]))


def test_without_a_lock_nothing_changes() -> None:
    env = {"A": "b"}
    take_turn(env)
    assert env == {"A": "b"}

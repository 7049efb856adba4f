"""Promotion rules that need no server: which version a rollback goes back to, strict params, durations."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from deploy.targets.state import DeployState, RollbackMark
from registry.promotion import PromotionParams, previous_version


def test_rollback_prefers_the_warm_previous_slot() -> None:
    state = DeployState(production_history=["1", "2", "3"])
    assert previous_version(state, "3", warm="1") == "1"


def test_rollback_without_warm_slot_uses_history() -> None:
    state = DeployState(production_history=["1", "2", "3"])
    assert previous_version(state, "3", warm=None) == "2"
    assert previous_version(DeployState(production_history=["4"]), "4", warm=None) is None


def test_rollback_never_goes_back_to_the_version_it_rolled_back_from() -> None:
    state = DeployState(
        production_history=["1", "2", "1"], last_rollback=RollbackMark(from_version="2", to_version="1", at=time.time())
    )
    assert previous_version(state, "1", warm=None) is None


def test_promotion_params_parse_durations_and_refuse_typos() -> None:
    params = PromotionParams(rollback_window="30m", ready_timeout="90s")
    assert params.rollback_window == 1800 and params.ready_timeout == 90
    with pytest.raises(ValidationError):
        PromotionParams(rollback_windw="30m")
    with pytest.raises(ValidationError):
        PromotionParams(rollback_window="later")

"""One factory makes the deployment target from settings; the local target keeps its own state (no journal) and
says why a slot gives no metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.targets import make_target
from deploy.targets.base import DeploymentError
from deploy.targets.local import LocalTarget
from deploy.targets.local.state import Slot, StateStore
from mlrelease.core.net import free_port


def test_the_default_target_is_local_with_the_given_timeouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLRELEASE_TARGET", raising=False)
    target = make_target(tmp_path / ".mlrelease", ready_timeout_s=5, drain_timeout_s=1)
    assert isinstance(target, LocalTarget) and (target.ready_timeout_s, target.drain_timeout_s) == (5, 1)
    state = tmp_path / ".mlrelease"
    said = f"local, process runtime (state in {state}, logs in {state / 'logs'}; replicas supervised by supervisord)"
    assert target.describe() == said
    monkeypatch.setenv("MLRELEASE_TARGET", "local")
    assert isinstance(make_target(tmp_path), LocalTarget)


def test_an_unknown_target_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRELEASE_TARGET", "k8s")
    with pytest.raises(DeploymentError) as err:
        make_target(tmp_path)
    assert str(err.value) == "unknown deployment target 'k8s' (MLRELEASE_TARGET): known targets: local"
    with pytest.raises(DeploymentError, match="unknown deployment target 'compose'"):
        make_target(tmp_path, "compose")  # an explicit kind wins over the environment


def test_a_slot_without_a_readable_metrics_page_says_why(tmp_path: Path) -> None:
    target = LocalTarget(tmp_path, routed=())
    with pytest.raises(DeploymentError, match="production/canary is empty"):
        target.slot_metrics("production", "canary")
    store = StateStore(tmp_path)
    state = store.load()
    port = free_port()  # nobody listens there
    state.env("production").slots["canary"] = Slot(version="3", port=port, pid=1, model_name="m", bundle_dir="/b")
    store.save(state)
    with pytest.raises(DeploymentError) as err:
        target.slot_metrics("production", "canary")
    assert str(err.value).startswith(f"no connection to http://127.0.0.1:{port} (")


def test_an_older_state_file_with_the_journal_in_it_still_loads(tmp_path: Path) -> None:
    """The promotion journal moved to its own file: the keys it left in state.json are ignored, then dropped."""
    old = {
        "environments": {"production": {"slots": {}, "weights": {"stable": 100.0}, "entry_port": 8123}},
        "production_history": ["1", "2"],
        "last_rollback": {"from_version": "2", "to_version": "1", "at": 1.0},
        "operation": {"command": "rollback", "version": "1", "pid": 1, "by": "oncall", "started_at": 1.0},
    }
    (tmp_path / "state.json").write_text(json.dumps(old))
    target = LocalTarget(tmp_path, routed=())
    assert target.weights("production") == {"stable": 100.0}
    target.hold_expiry("a rollback is journaled")
    saved = json.loads((tmp_path / "state.json").read_text())
    assert set(saved) == {"environments", "expiry_hold"} and saved["expiry_hold"] == "a rollback is journaled"


def test_an_unknown_key_in_the_state_file_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"environments": {}, "surprise": 1}))
    with pytest.raises(RuntimeError, match="unreadable deployment state"):
        StateStore(tmp_path).load()

"""Detached children of the local target outlive a CI job: no runner tracking marker in their environment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deploy.targets.process import REPO_ROOT, detached_env, spawn_detached


def test_a_detached_child_does_not_carry_the_runner_tracking_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TRACKING_ID", "github_0123")
    monkeypatch.setenv("MLRELEASE_KEPT", "yes")
    log = tmp_path / "child.log"
    code = "import os; print(os.environ.get('RUNNER_TRACKING_ID'), os.environ['MLRELEASE_KEPT'], os.environ['EXTRA'])"
    child = spawn_detached([sys.executable, "-c", code], log, {"EXTRA": "given"})
    assert child.wait(timeout=30) == 0
    assert log.read_text().split() == ["None", "yes", "given"]
    env = detached_env({"RUNNER_TRACKING_ID": "again"})
    assert "RUNNER_TRACKING_ID" not in env and env["MLRELEASE_KEPT"] == "yes"


def test_a_detached_child_can_import_the_repository(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = spawn_detached([sys.executable, "-c", "import deploy.targets.process as p; print(p.__file__)"], log)
    assert child.wait(timeout=30) == 0
    assert log.read_text().strip().startswith(str(REPO_ROOT))

"""The release, promote and rollback workflows: actionlint and zizmor clean, pinned, least privilege, bounded."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration  # starts processes (external tools, git, subprocesses)

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = [REPO / ".github" / "workflows" / name for name in ("release.yml", "promote.yml", "rollback.yml")]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run `make setup`")
    return path


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads `on` as True
    return data


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_first_line_says_what_it_does(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 30


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_to_full_shas_with_version_comment(path: Path) -> None:
    uses = re.findall(r"uses:\s*(\S+)(.*)", path.read_text())
    assert uses
    for ref, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref
        assert re.search(r"#\s*v\d", comment), f"{ref} has no version comment"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_timeouts_and_concurrency(path: Path) -> None:
    data = _load(path)
    assert data["permissions"] == {}
    for name, job in data["jobs"].items():
        assert job.get("timeout-minutes", 0) > 0, name
        assert set(job.get("permissions", {}).values()) <= {"read"}, name
        assert "concurrency" in job or "concurrency" in data, name


def test_production_needs_reviewers_environment() -> None:
    jobs = _load(WORKFLOWS[1])["jobs"]
    assert jobs["production"]["environment"] == "production"
    assert _load(WORKFLOWS[1])["on"]["workflow_dispatch"]["inputs"]["stage"]["options"] == ["canary", "production"]
    assert "scripts/rollback.sh" in WORKFLOWS[2].read_text()


def test_the_rollback_can_have_a_runner_of_its_own() -> None:
    """A runner takes one job at a time: the rollback must not queue behind a canary job on the same runner."""
    runs_on = _load(WORKFLOWS[2])["jobs"]["rollback"]["runs-on"]
    assert runs_on == "${{ vars.ROLLBACK_RUNNER_LABEL || 'self-hosted' }}"
    assert "ROLLBACK_RUNNER_LABEL" in (REPO / "docs" / "rollback.md").read_text()  # how to register that runner


def test_the_rollback_workflow_points_on_call_to_the_runbook() -> None:
    header = WORKFLOWS[2].read_text().split("\nname:", 1)[0]
    assert "docs/rollback.md" in header and (REPO / "docs" / "rollback.md").is_file()
    assert "README" not in WORKFLOWS[2].read_text()


def test_actionlint_is_clean() -> None:
    result = subprocess.run(
        [_tool("actionlint"), *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_offline_is_clean() -> None:
    result = subprocess.run(
        [_tool("zizmor"), "--offline", *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr

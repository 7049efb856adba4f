"""Every workflow file passes actionlint and zizmor, starts with a comment, and follows the house rules."""

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
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def _tool(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} is not installed (make setup installs it)"
    return found


def test_actionlint_is_clean() -> None:
    proc = subprocess.run([_tool("actionlint"), *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_is_clean() -> None:
    proc = subprocess.run(
        [_tool("zizmor"), "--offline", "--no-progress", *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_house_rules(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# "), "a workflow starts with a comment saying what it does"
    doc = yaml.safe_load(text)
    assert "permissions" in doc, "top-level least-privilege permissions"
    assert "concurrency" in doc or all("concurrency" in job for job in doc["jobs"].values())
    for name, job in doc["jobs"].items():
        assert "timeout-minutes" in job, f"job {name} has no timeout-minutes"
        for step in job.get("steps", []):
            if "uses" in step and not step["uses"].startswith("./"):
                assert PINNED.match(step["uses"]), f"{name}: {step['uses']} is not pinned to a commit SHA"


def test_pr_workflow_never_uses_the_team_registry() -> None:
    text = (REPO / ".github" / "workflows" / "pr.yml").read_text()
    assert "sqlite:///${{ runner.temp }}" in text
    assert "secrets." not in text


def test_pr_gates_that_pipe_into_tee_still_fail_the_step() -> None:
    """Without pipefail (a step's default shell is `bash -e`), `mlrelease compare | tee` exits with tee's 0."""
    doc = yaml.safe_load((REPO / ".github" / "workflows" / "pr.yml").read_text())
    assert doc["defaults"]["run"]["shell"] == "bash"  # GitHub runs it as bash --noprofile --norc -eo pipefail
    steps = [step for job in doc["jobs"].values() for step in job.get("steps", [])]
    piped = [step["name"] for step in steps if "| tee" in step.get("run", "")]
    assert piped and all("shell" not in step for step in steps if step.get("name") in piped)


def test_every_install_in_ci_takes_the_lock() -> None:
    """Two setups install the same versions: each pip install in a workflow, and make setup, which the workflows and
    .ci/run call, constrain it with requirements/constraints.txt."""
    installs = [line for path in WORKFLOWS for line in path.read_text().splitlines() if "pip install" in line]
    makefile = (REPO / "Makefile").read_text()
    lock = re.search(r"^LOCK := (\S+)$", makefile, re.MULTILINE)
    assert lock and lock[1] == "requirements/constraints.txt"
    # every install into the project's venv ($(LOCK_VENV) is make lock's own, for pip-compile)
    installs += [
        line.replace("$(LOCK)", lock[1])
        for line in makefile.splitlines()
        if "pip install" in line and "$(LOCK_VENV)" not in line
    ]
    assert len(installs) >= 4
    for line in installs:
        assert "-c requirements/constraints.txt" in line, line

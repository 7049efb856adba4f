"""Image policy, SBOM input and report writers on hand-made docker-archive images (real tar layout, real tools)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from deploy.image.findings import CheckResult, Finding
from deploy.image.gate import verdict
from deploy.image.imagefs import read_image
from deploy.image.policy import check_image_policy
from deploy.image.sarif import to_sarif, to_summary
from deploy.image.sbom import debian_packages, python_packages
from deploy.image.scan import ScanParams

pytestmark = pytest.mark.integration  # starts processes (external tools, git, subprocesses)

SECRET = "aws_secret_access_key = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'\n"
DPKG = (
    b"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\n\n"
    b"Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n"
)


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_archive(path: Path, layers: list[dict[str, bytes]], config: dict[str, object]) -> Path:
    """A docker-archive tar like `docker save` / `buildah push docker-archive:` write."""
    doc = {
        "config": config,
        "history": [{"created_by": f"step {i}"} for i in range(len(layers))],
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{i:064d}" for i in range(len(layers))]},
    }
    members = {"config.json": json.dumps(doc).encode()}
    names = []
    for index, files in enumerate(layers):
        names.append(f"layer{index}.tar")
        members[names[-1]] = _layer(files)
    members["manifest.json"] = json.dumps([{"Config": "config.json", "Layers": names}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


GOOD_CONFIG = {
    "User": "10001:10001",
    "Env": ["PATH=/usr/bin", "MLRELEASE_PORT=8080"],
    "Healthcheck": {"Test": ["CMD", "/opt/venv/bin/python", "/opt/app/healthcheck.py"]},
    "Labels": {"io.mlrelease.model.sha256": "ab" * 32},
}
BASE_LAYER = {
    "etc/passwd": b"root:x:0:0::/root:/bin/sh\n",
    "var/lib/dpkg/status": DPKG,
    "opt/venv/lib/python3.11/site-packages/numpy-2.4.6.dist-info/METADATA": b"Name: numpy\n",
    "opt/venv/lib/python3.11/site-packages/pydantic_core-2.50.4.dist-info/METADATA": b"Name: x\n",
}


def _scan(tmp_path: Path, layers: list[dict[str, bytes]], config: dict[str, object]) -> CheckResult:
    params = ScanParams()
    files = read_image(
        make_archive(tmp_path / "img.tar", layers, config),
        tuple(params.secret_roots),
        tuple(params.secret_skip),
        always=("/var/lib/dpkg/status",),
    )
    return check_image_policy(files, params)


def test_a_clean_image_passes(tmp_path: Path) -> None:
    result = _scan(tmp_path, [BASE_LAYER, {"opt/model/model_card.json": b'{"name": "m"}'}], GOOD_CONFIG)
    assert result.status == "pass", [f.message for f in result.findings]


def test_root_user_and_missing_healthcheck_fail(tmp_path: Path) -> None:
    result = _scan(tmp_path, [BASE_LAYER], {"User": "", "Env": []})
    assert result.status == "fail"
    assert {f.rule for f in result.findings} == {"non-root-user", "healthcheck"}


def test_secret_in_env_and_label_fail(tmp_path: Path) -> None:
    config = {**GOOD_CONFIG, "Env": ["API_TOKEN=abcdef0123456789"], "Labels": {"db_password": "hunter2hunter2"}}
    result = _scan(tmp_path, [BASE_LAYER], config)
    assert {f.rule for f in result.findings} == {"secret-in-env", "secret-in-label"}


def test_planted_secret_file_is_found_with_its_layer(tmp_path: Path) -> None:
    layers = [BASE_LAYER, {"opt/app/settings.ini": b"[aws]\n" + SECRET.encode()}]
    result = _scan(tmp_path, layers, GOOD_CONFIG)
    assert result.status == "fail"
    hit = next(f for f in result.findings if f.tool == "detect-secrets")
    assert hit.file == "/opt/app/settings.ini" and hit.line == 2
    assert hit.layer.startswith("layer 1") and "step 1" in hit.layer


def test_a_secret_deleted_by_a_later_layer_is_gone(tmp_path: Path) -> None:
    layers = [BASE_LAYER, {"root/creds.txt": SECRET.encode()}, {"root/.wh.creds.txt": b""}]
    result = _scan(tmp_path, layers, GOOD_CONFIG)
    assert result.status == "pass", [f.where() for f in result.findings]


def test_package_caches_and_training_packages_fail(tmp_path: Path) -> None:
    layers = [
        BASE_LAYER,
        {
            "root/.cache/pip/http/a/b": b"x",
            "var/cache/apt/archives/curl_8.deb": b"x",
            "opt/venv/lib/python3.11/site-packages/mlflow/__init__.py": b"",
        },
    ]
    result = _scan(tmp_path, layers, GOOD_CONFIG)
    rules = [f.rule for f in result.findings]
    assert rules.count("package-cache") == 2 and rules.count("not-for-serving") == 1


def test_packages_for_the_sbom(tmp_path: Path) -> None:
    files = read_image(
        make_archive(tmp_path / "img.tar", [BASE_LAYER], GOOD_CONFIG), ("/opt",), (), always=("/var/lib/dpkg/status",)
    )
    assert python_packages(files) == {"numpy": "2.4.6", "pydantic-core": "2.50.4"}
    assert debian_packages(files) == {"libc6": "2.36-9"}


def test_unchecked_vulnerabilities_follow_the_policy() -> None:
    checks = [CheckResult("code", "bandit", "pass"), CheckResult("vulnerabilities", "pip-audit", "not_checked")]
    passed, reasons = verdict(checks, ScanParams(unchecked_vulnerabilities="warn"))
    assert passed and "NOT CHECKED" in reasons[0]
    passed, reasons = verdict(checks, ScanParams(unchecked_vulnerabilities="fail"))
    assert not passed and "NOT CHECKED" in reasons[0]


def test_sarif_and_summary_name_file_line_layer_and_rule(tmp_path: Path) -> None:
    code = Finding("bandit", "B602", "error", "shell=True", file="mlrelease/x.py", line=5)
    image = Finding(
        "detect-secrets",
        "AWS Access Key",
        "error",
        "secret",
        file="/opt/app/s.ini",
        line=2,
        layer="layer 3 abc",
        in_image=True,
    )
    checks = [CheckResult("code", "bandit", "fail", [code]), CheckResult("image", "image-policy", "fail", [image])]
    sarif = to_sarif(checks, tmp_path / "deploy/docker/Dockerfile", tmp_path)
    assert sarif["version"] == "2.1.0"
    results = {r["ruleId"]: r for run in sarif["runs"] for r in run["results"]}  # type: ignore[index]
    loc = results["B602"]["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "mlrelease/x.py" and loc["region"]["startLine"] == 5
    img = results["AWS Access Key"]["locations"][0]
    assert img["physicalLocation"]["artifactLocation"]["uri"] == "deploy/docker/Dockerfile"
    assert img["logicalLocations"][0]["fullyQualifiedName"] == "image:/opt/app/s.ini"
    report = {"image": "img", "passed": False, "reasons": ["x"], "checks": [c.as_dict() for c in checks]}
    text = to_summary(report)
    assert "Scan FAILED" in text and "mlrelease/x.py:5" in text and "image:/opt/app/s.ini (layer 3 abc)" in text

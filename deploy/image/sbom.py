"""SBOM of the image's Python and Debian packages (CycloneDX JSON via cyclonedx-py), and their known
vulnerabilities (pip-audit; trivy or grype when installed). No reachable advisory source means "not checked"."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

from deploy.image.findings import CheckResult, Finding, Level, Status
from deploy.image.imagefs import ImageFiles
from deploy.image.scan import ScanParams, tool_path

DIST_INFO = re.compile(r"/([^/]+)-([^/-]+)\.dist-info/METADATA$")
DPKG_STATUS = "/var/lib/dpkg/status"
NETWORK_HINTS = (
    "connection",
    "resolve",
    "timed out",
    "timeout",
    "network",
    "unreachable",
    "max retries",
    "name or service",
    "proxy",
    "ssl",
)


def python_packages(files: ImageFiles) -> dict[str, str]:
    """{name: version} of every installed distribution in the image (from dist-info folder names)."""
    found = {}
    for path in files.paths:
        match = DIST_INFO.search(path)
        if match:
            found[match.group(1).replace("_", "-").lower()] = match.group(2)
    return dict(sorted(found.items()))


def debian_packages(files: ImageFiles) -> dict[str, str]:
    """{name: version} of installed Debian packages, from /var/lib/dpkg/status."""
    _layer, data = files.texts.get(DPKG_STATUS, (0, b""))
    packages = {}
    for stanza in data.decode(errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if "installed" in fields.get("Status", "") and "Package" in fields:
            packages[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(packages.items()))


def make_sbom(files: ImageFiles, image_ref: str, dest: Path) -> dict[str, int]:
    """Write a CycloneDX JSON SBOM: Python components by cyclonedx-py, Debian ones as pkg:deb purls."""
    binary = tool_path("cyclonedx-py")
    if binary is None:
        raise RuntimeError("cyclonedx-py is not installed (pip install cyclonedx-bom)")
    py, deb = python_packages(files), debian_packages(files)
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("".join(f"{n}=={v}\n" for n, v in py.items()))
        out = Path(tmp) / "sbom.json"
        proc = subprocess.run(
            [binary, "requirements", "--of", "JSON", "--output-reproducible", "-o", str(out), str(reqs)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"cyclonedx-py failed: {proc.stderr.strip()[-500:]}")
        bom = json.loads(out.read_text())
    for name, version in deb.items():
        purl = f"pkg:deb/debian/{name}@{version}?arch=amd64"
        bom.setdefault("components", []).append(
            {"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl}
        )
    bom.setdefault("metadata", {})["component"] = {"type": "container", "bom-ref": image_ref, "name": image_ref}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(bom, indent=2) + "\n")
    return {"python": len(py), "debian": len(deb)}


def _unreachable(text: str) -> bool:
    lowered = text.lower()
    return any(hint in lowered for hint in NETWORK_HINTS)


def pip_audit(packages: dict[str, str], params: ScanParams) -> CheckResult:
    """pip-audit of the image's pinned Python packages; unreachable advisories give status "not_checked"."""
    binary = tool_path("pip-audit")
    if binary is None:
        return CheckResult(
            "vulnerabilities", "pip-audit", "not_checked", detail="not checked: pip-audit is not installed"
        )
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("".join(f"{n}=={v}\n" for n, v in packages.items() if "+" not in v))
        argv = [
            binary,
            "-r",
            str(reqs),
            "--no-deps",
            "--disable-pip",
            "-f",
            "json",
            "--progress-spinner",
            "off",
            "--timeout",
            str(int(params.advisory_timeout_s)),
        ]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, check=False, timeout=params.advisory_timeout_s * 4 + 30
            )
        except subprocess.TimeoutExpired:
            return CheckResult(
                "vulnerabilities",
                "pip-audit",
                "not_checked",
                detail="not checked: the advisory service did not answer in time",
            )
    return _pip_audit_result(proc, params)


def _pip_audit_result(proc: subprocess.CompletedProcess[str], params: ScanParams) -> CheckResult:
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        why = "cannot reach the advisory service" if _unreachable(proc.stderr) else "pip-audit failed"
        last = proc.stderr.strip().splitlines()[-1:] or [""]
        return CheckResult(
            "vulnerabilities", "pip-audit", "not_checked", detail=f"not checked: {why} ({last[0][:200]})"
        )
    findings = []
    for dep in report.get("dependencies", []):
        for vuln in dep.get("vulns", []):
            fixes = ", ".join(vuln.get("fix_versions") or []) or "none yet"
            level: Level = "error" if params.fail_on_vulnerabilities else "warning"
            message = f"{dep['name']} {dep.get('version')}: {vuln['id']} (fixed in {fixes})"
            findings.append(
                Finding("pip-audit", str(vuln["id"]), level, message, file=f"python:{dep['name']}", in_image=True)
            )
    status: Status = ("fail" if params.fail_on_vulnerabilities else "warn") if findings else "pass"
    return CheckResult(
        "vulnerabilities", "pip-audit", status, findings, f"{len(report.get('dependencies', []))} packages checked"
    )


def image_scanner(archive: Path, params: ScanParams) -> CheckResult | None:
    """trivy or grype on the saved image when one is installed; None when neither is."""
    for name, argv in (
        ("trivy", ["image", "--input", str(archive), "-f", "json", "--quiet"]),
        ("grype", [f"docker-archive:{archive}", "-o", "json", "-q"]),
    ):
        binary = tool_path(name)
        if binary is None:
            continue
        try:
            proc = subprocess.run(
                [binary, *argv], capture_output=True, text=True, check=False, timeout=params.advisory_timeout_s * 8 + 60
            )
        except subprocess.TimeoutExpired:
            return CheckResult("vulnerabilities", name, "not_checked", detail=f"not checked: {name} timed out")
        if proc.returncode != 0:
            return CheckResult(
                "vulnerabilities",
                name,
                "not_checked",
                detail=f"not checked: {name} could not load its database ({proc.stderr[-200:]})",
            )
        return _image_scanner_result(name, proc.stdout, params)
    return None


def _image_scanner_result(name: str, stdout: str, params: ScanParams) -> CheckResult:
    data = json.loads(stdout or "{}")
    hits: list[tuple[str, str, str]] = []
    if name == "trivy":
        for result in data.get("Results", []) or []:
            hits += [
                (v["VulnerabilityID"], v["PkgName"], v.get("Severity", ""))
                for v in result.get("Vulnerabilities", []) or []
            ]
    else:
        hits += [
            (m["vulnerability"]["id"], m["artifact"]["name"], m["vulnerability"].get("severity", ""))
            for m in data.get("matches", [])
        ]
    level: Level = "error" if params.fail_on_vulnerabilities else "warning"
    findings = [
        Finding(name, vid, level, f"{pkg}: {vid} ({sev})", file=f"package:{pkg}", in_image=True)
        for vid, pkg, sev in hits
    ]
    status: Status = ("fail" if params.fail_on_vulnerabilities else "warn") if findings else "pass"
    return CheckResult("vulnerabilities", name, status, findings, f"{len(hits)} vulnerabilities")

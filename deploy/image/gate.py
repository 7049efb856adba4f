"""Run every scan check, apply the policy from params.yaml, and write scan.json, SARIF, SBOM and a summary."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from deploy.engine import Engine, save_image
from deploy.image.findings import CheckResult
from deploy.image.imagefs import read_image
from deploy.image.policy import check_image_policy
from deploy.image.sbom import DPKG_STATUS, image_scanner, make_sbom, pip_audit, python_packages
from deploy.image.scan import ScanParams, scan_bandit, scan_hadolint

log = logging.getLogger(__name__)


def image_checks(engine: Engine, image_ref: str, params: ScanParams, sbom_path: Path) -> list[CheckResult]:
    """Save the image, then run the policy, SBOM and vulnerability checks on its files."""
    with tempfile.TemporaryDirectory(prefix="mlrelease-scan-") as tmp:
        archive = save_image(engine, image_ref, Path(tmp) / "image.tar")
        files = read_image(
            archive,
            tuple(params.secret_roots),
            tuple(params.secret_skip),
            params.max_text_file_bytes,
            always=(DPKG_STATUS,),
        )
        checks = [check_image_policy(files, params)]
        counts = make_sbom(files, image_ref, sbom_path)
        checks.append(
            CheckResult(
                "sbom",
                "cyclonedx-py",
                "pass",
                detail=f"{counts['python']} Python and {counts['debian']} Debian packages in {sbom_path.name}",
            )
        )
        checks.append(pip_audit(python_packages(files), params))
        extra = image_scanner(archive, params)
        if extra is not None:
            checks.append(extra)
    return checks


def verdict(checks: list[CheckResult], params: ScanParams) -> tuple[bool, list[str]]:
    """Whether the gate passes, and the reasons it does not (or the warnings it carries)."""
    reasons = [
        f"{c.tool}: {sum(f.level == 'error' for f in c.findings)} finding(s) over the policy"
        for c in checks
        if c.status == "fail"
    ]
    vulns = [c for c in checks if c.name == "vulnerabilities"]
    unchecked = bool(vulns) and all(c.status == "not_checked" for c in vulns)
    if unchecked:
        note = "vulnerabilities NOT CHECKED: no advisory source was reachable"
        reasons.append(note if params.unchecked_vulnerabilities == "fail" else f"warning: {note}")
    failed = any(c.status == "fail" for c in checks) or (unchecked and params.unchecked_vulnerabilities == "fail")
    return not failed, reasons


def run_scan(
    root: Path, params: ScanParams, *, engine: Engine | None, image_ref: str | None, dockerfile: Path, out_dir: Path
) -> dict[str, object]:
    """All checks (image checks only when an image is given); write the reports; return scan.json's content."""
    from deploy.image.sarif import to_sarif, to_summary

    out_dir.mkdir(parents=True, exist_ok=True)
    checks = [scan_bandit(root, params), scan_hadolint(dockerfile, params, root)]
    if engine is not None and image_ref:
        checks += image_checks(engine, image_ref, params, out_dir / "sbom.json")
    passed, reasons = verdict(checks, params)
    report: dict[str, object] = {
        "image": image_ref,
        "passed": passed,
        "reasons": reasons,
        "policy": params.model_dump(),
        "checks": [c.as_dict() for c in checks],
    }
    (out_dir / "scan.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "scan.sarif").write_text(json.dumps(to_sarif(checks, dockerfile, root), indent=2) + "\n")
    (out_dir / "scan.md").write_text(to_summary(report))
    return report

"""SARIF 2.1.0 for GitHub code scanning, and a readable Markdown summary of the scan report.

Findings inside the image have no repository file: they point at the Dockerfile that produced the image and carry
the image path and layer as a logical location, so code scanning still shows them.
"""

from __future__ import annotations

from pathlib import Path

from deploy.image.findings import CheckResult, Finding

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _location(finding: Finding, dockerfile_uri: str) -> dict[str, object]:
    if finding.in_image:
        physical = {"artifactLocation": {"uri": dockerfile_uri}, "region": {"startLine": 1}}
        logical = [
            {
                "fullyQualifiedName": f"image:{finding.file or 'config'}",
                "kind": "resource",
                "name": finding.layer or "image config",
            }
        ]
        return {"physicalLocation": physical, "logicalLocations": logical}
    region = {"startLine": max(finding.line, 1)}
    return {"physicalLocation": {"artifactLocation": {"uri": finding.file}, "region": region}}


def _run(tool: str, findings: list[Finding], dockerfile_uri: str) -> dict[str, object]:
    rules = sorted({f.rule for f in findings})
    results = [
        {
            "ruleId": f.rule,
            "level": f.level,
            "message": {"text": f"{f.message} [{f.where()}]"},
            "locations": [_location(f, dockerfile_uri)],
        }
        for f in findings
    ]
    return {
        "tool": {
            "driver": {
                "name": tool,
                "informationUri": "https://github.com/",
                "rules": [{"id": r, "shortDescription": {"text": r}} for r in rules],
            }
        },
        "results": results,
    }


def to_sarif(checks: list[CheckResult], dockerfile: Path, root: Path) -> dict[str, object]:
    """One SARIF run per tool, with repository-relative file URIs."""
    uri = str(dockerfile.relative_to(root)) if dockerfile.is_relative_to(root) else dockerfile.name
    by_tool: dict[str, list[Finding]] = {}
    for check in checks:
        for finding in check.findings:
            by_tool.setdefault(finding.tool, []).append(finding)
        by_tool.setdefault(check.tool, [])
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [_run(tool, found, uri) for tool, found in sorted(by_tool.items())],
    }


def to_summary(report: dict[str, object]) -> str:
    """A Markdown summary: the verdict, one line per check, then every finding with its location and rule."""
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [f"# Scan {verdict}: {report.get('image') or 'source only'}", ""]
    reasons = report.get("reasons") or []
    assert isinstance(reasons, list)
    lines += [f"- {reason}" for reason in reasons]
    lines += ["", "| check | tool | status | findings | detail |", "| --- | --- | --- | --- | --- |"]
    checks = report["checks"]
    assert isinstance(checks, list)
    for check in checks:
        status = "not checked" if check["status"] == "not_checked" else check["status"]
        lines.append(f"| {check['name']} | {check['tool']} | {status} | {len(check['findings'])} | {check['detail']} |")
    findings = [f for check in checks for f in check["findings"]]
    if findings:
        lines += ["", "## Findings", ""]
        lines += [f"- [{f['level']}] {f['tool']} {f['rule']} at {f['where']}: {f['message']}" for f in findings]
    return "\n".join(lines) + "\n"

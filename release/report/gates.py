"""Every gate a version went through, grouped by stage, failed ones first: the pipeline's gate reports, the
load-test SLOs, the image build and scan, the staging gates and each canary's analysis."""

from __future__ import annotations

from typing import Any

from release.report.model import CanaryRun, GateGroup, GateRow
from release.report.sources import Workspace

SLO_CHECKS = (  # loadtest stats key, SLO key, "max" (the stat must stay at or under it) or "min"
    ("p95_ms", "p95_ms", "max"),
    ("p99_ms", "p99_ms", "max"),
    ("error_rate", "max_error_rate", "max"),
    ("rps", "min_rps", "min"),
)


def shown(value: Any) -> str:
    """A gate's value or threshold as text: floats to 6 significant digits, the rest as they are."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def ordered(groups: list[GateGroup]) -> list[GateGroup]:
    """Groups with a failed gate first (the rest keep the release's order), failed gates first within each."""
    for group in groups:
        group.gates.sort(key=lambda g: g.passed)
    return sorted((g for g in groups if g.gates), key=lambda g: g.passed)


def report_gates(stage: str, report: dict[str, Any], source: str) -> GateGroup:
    """A pipeline gate report (``{"gates": [{name, value, threshold, passed, detail}]}``) as a group."""
    rows = [
        GateRow(
            stage=stage,
            name=str(g.get("name")),
            value=shown(g.get("value")),
            threshold=shown(g.get("threshold")),
            passed=bool(g.get("passed")),
            detail=str(g.get("detail") or ""),
        )
        for g in report.get("gates", [])
    ]
    return GateGroup(stage=stage, source=source, gates=rows)


def data_gates(report: dict[str, Any], source: str) -> GateGroup:
    """The data contract check of each split (reports/data_validation.json)."""
    rows = [
        GateRow(
            stage="data",
            name=f"{str(table.get('name')).rsplit('/', 1)[-1]} contract",
            value=f"{table.get('rows')} rows, {len(table.get('failures') or [])} failed",
            threshold="none failed",
            passed=bool(table.get("valid")),
        )
        for table in report.get("tables", [])
    ]
    return GateGroup(stage="data", source=source, gates=rows)


def loadtest_gates(stage: str, report: dict[str, Any], source: str) -> GateGroup:
    """The Locust SLO gate (stats against ``slo``) of a load-test report."""
    stats, slo = report.get("stats") or {}, report.get("slo") or {}
    rows = []
    for stat, limit, way in SLO_CHECKS:
        if stat not in stats or limit not in slo:
            continue
        value, bound = float(stats[stat]), float(slo[limit])
        ok = value <= bound if way == "max" else value >= bound
        rows.append(
            GateRow(
                stage=stage,
                name=f"slo_{stat}",
                value=shown(round(value, 4)),
                threshold=f"{'<=' if way == 'max' else '>='} {bound:g}",
                passed=ok and value == value,  # NaN (nothing answered) fails
            )
        )
    return GateGroup(stage=stage, source=source, gates=rows)


def build_gates(build: dict[str, Any], max_image_mb: float | None, source: str) -> GateGroup:
    """The image build's size budget and smoke test (reports/build.json)."""
    rows = []
    if max_image_mb is not None and "image_size_mb" in build:
        size = float(build["image_size_mb"])
        rows.append(
            GateRow(
                stage="image",
                name="image_size_mb",
                value=shown(size),
                threshold=f"<= {max_image_mb:g}",
                passed=size <= max_image_mb,
            )
        )
    smoke = build.get("smoke")
    if isinstance(smoke, dict):
        rows.append(
            GateRow(
                stage="image",
                name="container_smoke_test",
                value=shown(smoke.get("max_abs_diff", "ran")),
                threshold="same predictions as the host model",
                passed=bool(smoke.get("passed")),
            )
        )
    return GateGroup(stage="image", source=source, gates=rows)


def scan_gates(scan: dict[str, Any], source: str) -> GateGroup:
    """Each check of the security scan (reports/scan.json): its status and number of findings."""
    rows = [
        GateRow(
            stage="scan",
            name=str(check.get("name")),
            value=f"{check.get('status')}, {len(check.get('findings') or [])} finding(s)",
            threshold=f"no finding over the policy ({check.get('tool')})",
            passed=check.get("status") != "fail",
            detail=str(check.get("detail") or ""),
        )
        for check in scan.get("checks", [])
    ]
    return GateGroup(stage="scan", source=source, gates=rows)


def staging_gates(records: list[dict[str, Any]], version: str, ws: Workspace) -> GateGroup | None:
    """The last staging promotion of the version: its smoke test and load-test gate, or why it failed."""
    moves = [r for r in records if r.get("action") == "promote" and r.get("alias") == "staging"]
    mine = [r for r in moves if str(r.get("to_version")) == version]
    if not mine:
        return None
    last = mine[-1]
    if last.get("outcome") == "failed":
        row = GateRow(
            stage="staging", name="staging gates", value="failed", threshold="pass", passed=False, detail=last["reason"]
        )
        return GateGroup(stage="staging", source="audit log", gates=[row])
    evidence = last.get("evidence") or {}
    rows = []
    if "smoke" in evidence:
        smoke = evidence["smoke"]
        rows.append(
            GateRow(
                stage="staging",
                name="smoke_test",
                value=f"{smoke.get('rows')} rows, HTTP {smoke.get('status')}",
                threshold="classes and probabilities match the card",
                passed=True,
            )
        )
    load = ws.report(f"loadtest_staging_v{version}.json")
    if load:
        rows += loadtest_gates("staging", load, "").gates
    return GateGroup(stage="staging", source=f"audit log, reports/loadtest_staging_v{version}.json", gates=rows)


def canary_gates(runs: list[CanaryRun], limits: dict[str, Any]) -> GateGroup | None:
    """Each canary of the version as one gate: its intervals by verdict against the failure and inconclusive
    limits."""
    if not runs:
        return None
    rows = []
    for number, run in enumerate(runs, start=1):
        verdicts = [i.verdict for i in run.intervals]
        value = ", ".join(f"{verdicts.count(v)} {v}" for v in ("passed", "failed", "inconclusive") if v in verdicts)
        rows.append(
            GateRow(
                stage="canary",
                name=f"canary {number} against version {run.against or '?'} ({run.started})",
                value=value or "no interval measured",
                threshold=(
                    f"failed <= {limits.get('failure_limit', 0)}, inconclusive <= {limits.get('inconclusive_limit', 1)}"
                ),
                passed=run.outcome == "passed",
                detail=run.reason,
            )
        )
    return GateGroup(stage="canary", source="audit log", gates=rows)

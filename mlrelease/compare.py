"""A pull request's model against its base branch: metrics within tolerance, and gate thresholds not loosened.

In a pull request the throwaway registry has no `production` version, so evaluate's champion gate cannot fire.
The base branch's committed `reports/metrics.json` is the champion there: accuracy and ROC AUC may trail it by at
most the base branch's `gates.champion_tolerance` (the PR cannot widen its own tolerance), and a PR that lowers a
minimum or raises a maximum of a gate is named, since it changes what every later model must pass.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

import yaml

# The champion gate's metrics (higher is better), then figures shown for context only.
GATED_METRICS = ("accuracy", "roc_auc")
SHOWN_METRICS = ("f1", "precision", "recall")
# Gate thresholds and which way loosens them: "min" thresholds loosen downwards, "max" ones upwards.
THRESHOLDS: dict[str, str] = {
    "gates.min_accuracy": "min",
    "gates.min_roc_auc": "min",
    "gates.champion_tolerance": "max",
    "export.parity_atol": "max",
    "export.max_mean_ms_batch1": "max",
    "export.max_p95_ms_batch1": "max",
}


@dataclass(frozen=True)
class MetricRow:
    """One metric, base against head; ``passed`` is None for a figure shown without a gate."""

    name: str
    base: float | None
    head: float | None
    passed: bool | None

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.head is None else self.head - self.base


@dataclass(frozen=True)
class Comparison:
    rows: list[MetricRow]
    tolerance: float
    loosened: list[str]

    @property
    def regressions(self) -> list[MetricRow]:
        return [row for row in self.rows if row.passed is False]

    @property
    def passed(self) -> bool:
        return not self.regressions and not self.loosened


def git_show(ref: str, path: str) -> str | None:
    """A file's text at ``ref``, or None when the file does not exist there."""
    proc = subprocess.run(  # fixed git argv, no shell
        ["git", "show", f"{ref}:{path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return proc.stdout
    if "does not exist" in proc.stderr or "exists on disk, but not in" in proc.stderr:
        return None
    raise ValueError(f"git cannot read {path} at {ref!r}: {proc.stderr.strip()} (fetch the base branch first)")


def compare_metrics(base: dict[str, Any], head: dict[str, Any], tolerance: float) -> list[MetricRow]:
    """Gated metrics may trail the base by at most ``tolerance``; a gated metric missing from head fails."""
    rows = []
    for name in (*GATED_METRICS, *SHOWN_METRICS):
        b, h = _number(base.get(name)), _number(head.get(name))
        passed = None
        if name in GATED_METRICS and b is not None:
            passed = h is not None and h >= b - tolerance
        rows.append(MetricRow(name, b, h, passed))
    return rows


def loosened_gates(base_params: dict[str, Any], head_params: dict[str, Any]) -> list[str]:
    """Each threshold the head moved the loosening way, as 'key: base -> head'."""
    found = []
    for key, kind in THRESHOLDS.items():
        b, h = _number(_lookup(base_params, key)), _number(_lookup(head_params, key))
        if b is None or h is None:
            continue
        if (kind == "min" and h < b) or (kind == "max" and h > b):
            found.append(f"{key}: {b:g} -> {h:g}")
    return found


def compare_with(ref: str, head_metrics: dict[str, Any], head_params: dict[str, Any]) -> Comparison | None:
    """The comparison with ``ref``'s committed metrics and params; None when ``ref`` has no metrics yet."""
    base_text = git_show(ref, "reports/metrics.json")
    if base_text is None:
        return None
    base_params = yaml.safe_load(git_show(ref, "params.yaml") or "{}") or {}
    tolerance = _number(_lookup(base_params, "gates.champion_tolerance"))
    if tolerance is None:
        tolerance = _number(_lookup(head_params, "gates.champion_tolerance")) or 0.0
    rows = compare_metrics(json.loads(base_text), head_metrics, tolerance)
    return Comparison(rows, tolerance, loosened_gates(base_params, head_params))


def markdown(comparison: Comparison, ref: str) -> str:
    """The comparison as a Markdown section for a job summary."""
    verdict = "passed" if comparison.passed else "**FAILED**"
    lines = [f"## Model vs {ref}: {verdict}", "", "| metric | base | this PR | change | gate |"]
    lines.append("|---|---:|---:|---:|---|")
    fail = f"FAIL (more than {comparison.tolerance:g} below base)"
    for row in comparison.rows:
        gate = "-" if row.passed is None else ("PASS" if row.passed else fail)
        lines.append(f"| {row.name} | {_fmt(row.base)} | {_fmt(row.head)} | {_fmt(row.delta, signed=True)} | {gate} |")
    lines += ["", f"Tolerance: `gates.champion_tolerance` = {comparison.tolerance:g}, from {ref}'s params.yaml."]
    if comparison.loosened:
        lines += ["", "**Gate thresholds loosened by this PR** (every later model is held to these):"]
        lines += [f"- `{item}`" for item in comparison.loosened]
    return "\n".join(lines)


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"

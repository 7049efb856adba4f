"""This version against another: production (or, when it is production, the version it replaced), or a base
branch's committed metrics in a pull request. Metrics side by side, and what else differs (params, lineage,
loosened gates), so the differences stand out."""

from __future__ import annotations

from typing import Any

from release.report.model import Comparison, Difference, MetricRow
from release.report.sources import RegistryView, VersionFacts

GATED = ("accuracy", "roc_auc")  # the champion gate's metrics (higher is better), as pipelines.compare has them
SHOWN = ("f1", "precision", "recall")
LINEAGE = ("git_commit", "data_hash", "params_hash", "artifact_sha256")
METRIC_TAG, PARAM_TAG = "metric.", "param."


def _float(value: Any) -> float | None:
    """A metric as a number (tags are text); None when it is not one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def metric_rows(this: dict[str, Any], other: dict[str, Any], tolerance: float | None) -> list[MetricRow]:
    """The champion metrics first, then the others both have; ``failed`` when a gated one trails by more than the
    tolerance."""
    names = [*GATED, *SHOWN]
    names += sorted((set(this) & set(other)) - set(names) - {"n_test"})
    rows = []
    for name in names:
        a, b = _float(this.get(name)), _float(other.get(name))
        if a is None and b is None:
            continue
        better = None if a is None or b is None or a == b else a > b
        failed = name in GATED and tolerance is not None and a is not None and b is not None and a < b - tolerance
        rows.append(MetricRow(name=name, this=a, other=b, better=better, gated=name in GATED, failed=failed))
    return rows


def tagged(tags: dict[str, str], prefix: str) -> dict[str, str]:
    """The tags under ``prefix`` (``metric.``, ``param.``), by the name after it."""
    return {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)}


def differences(this: VersionFacts, other: VersionFacts) -> list[Difference]:
    """Lineage and params that differ between the two versions (metric tags are the rows)."""
    found = []
    for key in LINEAGE:
        a, b = this.tags.get(key, "-"), other.tags.get(key, "-")
        if a != b:
            found.append(Difference(name=key, this=a, other=b))
    mine, theirs = tagged(this.tags, PARAM_TAG), tagged(other.tags, PARAM_TAG)
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            found.append(Difference(name=f"params: {key}", this=mine.get(key, "-"), other=theirs.get(key, "-")))
    return found


def replaced_version(records: list[dict[str, Any]], version: str) -> str | None:
    """The production version this one replaced, from its last production promotion in the audit log."""
    promotions = [
        r
        for r in records
        if r.get("action") == "promote" and r.get("environment") == "production" and r.get("to_version") == version
    ]
    return str(promotions[-1]["from_version"]) if promotions and promotions[-1].get("from_version") else None


def against_registry(
    view: RegistryView, this: VersionFacts, records: list[dict[str, Any]], tolerance: float | None
) -> Comparison:
    """Against production, or the version it replaced when it is production itself; a note when there is none."""
    production = view.alias("production")
    other, label = production, f"production (version {production})"
    if production == this.version:
        other = replaced_version(records, this.version)
        label = f"version {other}, which it replaced in production"
    if other is None or other == this.version:
        note = "no production version yet" if production is None else "no earlier production version to compare with"
        return Comparison(against="production", notes=[f"{note}: nothing to compare with"])
    theirs = view.facts(other)
    rows = metric_rows(tagged(this.tags, METRIC_TAG), tagged(theirs.tags, METRIC_TAG), tolerance)
    return Comparison(against=label, rows=rows, differences=differences(this, theirs), tolerance=tolerance)


def against_base(base: str, head_metrics: dict[str, Any], head_params: dict[str, Any]) -> Comparison:
    """Against a base branch's committed reports/metrics.json and params.yaml (a pull request's report), with the
    gates and contract checks the change loosens."""
    from pipelines.compare import compare_with

    found = compare_with(base, head_metrics, head_params)
    if found is None:
        return Comparison(against=base, notes=[f"{base} has no committed reports/metrics.json: a first model"])
    base_metrics = {row.name: row.base for row in found.rows}
    rows = metric_rows(head_metrics, base_metrics, found.tolerance)
    diffs = [Difference(name="loosened", this=text, other="") for text in found.loosened]
    diffs += [Difference(name="interface", this=text, other="") for text in found.interface]
    notes = [f"tolerance {found.tolerance:g} from {found.tolerance_from}"]
    return Comparison(
        against=f"{base}'s committed metrics", rows=rows, differences=diffs, tolerance=found.tolerance, notes=notes
    )

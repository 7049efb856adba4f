"""The release report's data: what one model version is, what it passed, how it served and how it compares.

Plain pydantic models, filled by :mod:`release.report.gather` from the workspace's reports, the audit log and the
registry, and drawn by :mod:`release.report.render`. Every section can be empty; ``missing`` says why it is.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Identity(BaseModel):
    """Who the version is and where it serves now."""

    model_name: str
    version: str
    aliases: list[str] = Field(default_factory=list)
    artifact_sha256: str | None = None
    image_digest: str | None = None
    image_ref: str | None = None
    git_commit: str | None = None
    data_hash: str | None = None
    params_hash: str | None = None
    registered_at: str | None = None
    run_id: str | None = None
    serving: list[str] = Field(default_factory=list)  # "production/stable: 95% of traffic"
    flags: list[str] = Field(default_factory=list)  # "rolled back from production (...)", "canary passed against 2"


class GateRow(BaseModel):
    """One gate: what was measured, against what, and the verdict."""

    stage: str
    name: str
    value: str
    threshold: str
    passed: bool
    detail: str = ""


class GateGroup(BaseModel):
    """The gates of one stage, failed ones first, and the report they come from."""

    stage: str
    source: str
    gates: list[GateRow] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> int:
        return sum(1 for g in self.gates if not g.passed)


class CanaryCheck(BaseModel):
    """One check of one canary interval: the canary's value against its limit (``over``: beyond it)."""

    name: str
    value: float | None
    limit: float | None
    shown: str
    over: bool = False


class CanaryInterval(BaseModel):
    """One measurement interval: the canary's weight, each check, and the analysis' verdict with its reasons."""

    number: int
    weight: float
    verdict: str
    reasons: list[str] = Field(default_factory=list)
    checks: list[CanaryCheck] = Field(default_factory=list)
    canary_p99_ms: float | None = None
    stable_p99_ms: float | None = None
    canary_error_rate: float | None = None


class CanaryRun(BaseModel):
    """One canary of the version: against which stable version, when, by whom, its intervals and its outcome."""

    started: str
    ended: str
    by: str
    against: str | None
    outcome: str  # passed | rolled back
    reason: str = ""
    forced: bool = False
    intervals: list[CanaryInterval] = Field(default_factory=list)


class HistoryRow(BaseModel):
    """One audit record that touched the version: who, when, from, to, why, forced or not."""

    when: str
    by: str
    action: str
    environment: str
    alias: str | None = None
    from_version: str | None = None
    to_version: str | None = None
    weights: str = ""
    outcome: str = ""
    reason: str = ""
    forced: bool = False


class MetricRow(BaseModel):
    """A metric of this version beside the other one's; ``better`` is None when equal or not comparable."""

    name: str
    this: float | None
    other: float | None
    better: bool | None = None
    gated: bool = False  # the champion gate's metrics (accuracy, ROC AUC)
    failed: bool = False  # behind by more than the tolerance

    @property
    def delta(self) -> float | None:
        return None if self.this is None or self.other is None else self.this - self.other


class Difference(BaseModel):
    """A non-metric fact that differs between the two versions (a param, the data hash, a loosened gate)."""

    name: str
    this: str
    other: str


class Comparison(BaseModel):
    """This version against another: production (or the one it replaced), or a base branch's committed reports."""

    against: str
    rows: list[MetricRow] = Field(default_factory=list)
    differences: list[Difference] = Field(default_factory=list)
    tolerance: float | None = None
    notes: list[str] = Field(default_factory=list)


class Plots(BaseModel):
    """The numbers behind the plots (each may be empty: the plot then says why)."""

    roc: list[dict[str, float]] = Field(default_factory=list)  # fpr, tpr
    roc_auc: float | None = None
    confusion: list[list[int]] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    losses: list[dict[str, float]] = Field(default_factory=list)  # epoch, train_loss, val_loss
    best_epoch: int | None = None
    export_latency: dict[str, list[list[float]]] = Field(default_factory=dict)  # batch -> [[percentile, ms]]
    load_history: list[dict[str, float]] = Field(default_factory=list)  # t, p50_ms, p95_ms, p99_ms, rps
    load_slo: dict[str, float] = Field(default_factory=dict)
    load_source: str = ""
    drift: dict[str, dict[str, float]] = Field(default_factory=dict)  # series (test split, served now) -> feature
    drift_noise: dict[str, float] = Field(default_factory=dict)  # series -> the PSI sampling alone gives its rows
    why_missing: dict[str, str] = Field(default_factory=dict)  # plot name -> why it has no data


class ReleaseReport(BaseModel):
    """Everything the release report shows about one version."""

    identity: Identity
    generated_at: str
    gates: list[GateGroup] = Field(default_factory=list)
    plots: Plots = Field(default_factory=Plots)
    canary_runs: list[CanaryRun] = Field(default_factory=list)
    canary_note: str = ""
    history: list[HistoryRow] = Field(default_factory=list)
    comparison: Comparison | None = None
    notes: list[str] = Field(default_factory=list)  # what this report could not show, and why
    sources: dict[str, Any] = Field(default_factory=dict)  # where each section's data came from

    @property
    def failed_gates(self) -> int:
        return sum(group.failed for group in self.gates)

    @property
    def gate_count(self) -> int:
        return sum(len(group.gates) for group in self.gates)

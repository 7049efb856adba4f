"""Gather one version's release report from the workspace's reports, the audit log, the registry and the
deployment: pure functions of what :class:`ReportContext` holds, so tests give them fakes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from registry.image import IMAGE_DIGEST_TAG, IMAGE_REF_TAG
from release.report import comparison, gates, timeline
from release.report.drift import served_psi, split_psi
from release.report.model import CanaryRun, Comparison, GateGroup, HistoryRow, Identity, Plots, ReleaseReport
from release.report.sources import RegistryView, VersionFacts, Workspace
from release.report.where import ServingView, busiest, described
from release.states import PASSED_AGAINST_TAG, PASSED_TAG, ROLLED_BACK_TAG


@dataclass
class ReportContext:
    """Everything the report reads: workspace files, registry, audit records, params.yaml, deployment."""

    workspace: Workspace
    view: RegistryView
    records: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)  # params.yaml as read (sections the report needs)
    serving: ServingView | None = None
    base: str | None = None  # a git ref: compare with its committed metrics instead of production
    clock: Callable[[], float] = time.time


def utc(seconds: float | None) -> str | None:
    """A UNIX time as the report shows it (UTC, to the second); None stays None."""
    return None if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def gather(ctx: ReportContext, version: str) -> ReleaseReport:
    """The report of ``version``: identity, gates, plots, canaries, history and the comparison."""
    facts = ctx.view.facts(version)
    mismatch = ctx.workspace.pipeline_reports_of(facts.tags.get("artifact_sha256"))
    places = ctx.serving.where(version) if ctx.serving is not None else []
    runs = timeline.canary_runs(ctx.records, version, canary_limits(ctx, version))
    report = ReleaseReport(
        identity=identity(facts, described(places)),
        generated_at=utc(ctx.clock()) or "",
        gates=gate_groups(ctx, facts, mismatch, runs),
        plots=plots(ctx, facts, mismatch, places),
        canary_runs=runs,
        canary_note="" if runs else no_canary(ctx.records, version),
        history=history(ctx.records, version),
        comparison=compare(ctx, facts),
    )
    if mismatch:
        report.notes.append(f"Pipeline gates and plots are not shown: {mismatch}.")
    report.sources = {"workspace": str(ctx.workspace.home), "audit records": len(ctx.records)}
    return report


def identity(facts: VersionFacts, serving: list[str]) -> Identity:
    """The version's lineage from its tags, where it serves, and the release flags it carries."""
    tags = facts.tags
    flags = []
    if tags.get(ROLLED_BACK_TAG):
        flags.append(f"rolled back from production ({tags[ROLLED_BACK_TAG]})")
    if tags.get(PASSED_TAG["canary"]) == "true":
        flags.append(f"canary passed against version {tags.get(PASSED_AGAINST_TAG, '?')}")
    if tags.get(PASSED_TAG["staging"]) == "true":
        flags.append("staging gates passed")
    return Identity(
        model_name=facts.model_name,
        version=facts.version,
        aliases=facts.aliases,
        artifact_sha256=tags.get("artifact_sha256"),
        image_digest=tags.get(IMAGE_DIGEST_TAG),
        image_ref=tags.get(IMAGE_REF_TAG),
        git_commit=tags.get("git_commit"),
        data_hash=tags.get("data_hash"),
        params_hash=tags.get("params_hash"),
        registered_at=utc(facts.created_ms / 1000) if facts.created_ms else None,
        run_id=facts.run_id,
        serving=serving,
        flags=flags,
    )


def canary_limits(ctx: ReportContext, version: str) -> dict[str, Any]:
    """The canary thresholds: those its last report recorded, else params.yaml's ``canary:`` section."""
    recorded = ctx.workspace.report(f"canary_v{version}.json").get("params")
    return dict(recorded) if isinstance(recorded, dict) else dict(ctx.params.get("canary") or {})


def gate_groups(
    ctx: ReportContext, facts: VersionFacts, mismatch: str | None, runs: list[CanaryRun]
) -> list[GateGroup]:
    """Every stage's gates the version has evidence of, failed first."""
    ws, found = ctx.workspace, []
    if mismatch is None:
        found += [
            gates.data_gates(ws.report("data_validation.json"), "reports/data_validation.json"),
            gates.report_gates("evaluate", ws.report("evaluate_gates.json"), "reports/evaluate_gates.json"),
            gates.report_gates("export", ws.report("export.json"), "reports/export.json"),
            gates.loadtest_gates("loadtest", ws.report("loadtest.json"), "reports/loadtest.json"),
        ]
    found += image_groups(ctx, facts)
    staging = gates.staging_gates(ctx.records, facts.version, ws)
    canary = gates.canary_gates(runs, canary_limits(ctx, facts.version))
    found += [group for group in (staging, canary) if group is not None]
    return gates.ordered(found)


def image_groups(ctx: ReportContext, facts: VersionFacts) -> list[GateGroup]:
    """The image build and scan of this version (reports/build.json and scan.json, when they are its)."""
    build = ctx.workspace.report("build.json")
    if str(build.get("model_version")) != facts.version:
        return []
    max_mb = (ctx.params.get("build") or {}).get("max_image_mb")
    found = [gates.build_gates(build, float(max_mb) if max_mb is not None else None, "reports/build.json")]
    scan = ctx.workspace.report("scan.json")
    if scan and scan.get("image") == build.get("image_ref"):
        found.append(gates.scan_gates(scan, "reports/scan.json"))
    return found


def plots(ctx: ReportContext, facts: VersionFacts, mismatch: str | None, places: list[tuple[str, str, float]]) -> Plots:
    """The numbers behind every plot, and why a plot has none."""
    out = Plots()
    if mismatch is None:
        pipeline_plots(ctx.workspace, out)
    else:
        for name in ("roc", "confusion", "export_latency"):
            out.why_missing[name] = mismatch
        if facts.run_id:
            out.losses = ctx.view.loss_history(facts.run_id)
    if not out.losses:
        out.why_missing.setdefault("losses", mismatch or "no train_history.json and no loss history in the run")
    load_plot(ctx.workspace, facts.version, mismatch, out)
    drift_plot(ctx, mismatch, places, out)
    return out


def pipeline_plots(ws: Workspace, out: Plots) -> None:
    """ROC, confusion matrix, losses and export latency from the pipeline's reports."""
    metrics = ws.report("metrics.json")
    out.roc = [{"fpr": float(p["fpr"]), "tpr": float(p["tpr"])} for p in ws.report("plots/roc.json").get("roc", [])]
    out.roc_auc = metrics.get("roc_auc")
    out.confusion = [[int(n) for n in row] for row in metrics.get("confusion_matrix", [])]
    out.labels = [str(c) for c in ws.json("models/model_card.json").get("classes", [])]
    out.losses = ws.report("train_history.json").get("history", [])
    out.best_epoch = ws.json("models/train_run.json").get("best_epoch")
    out.export_latency = ws.report("export.json").get("latency_distribution_ms", {})
    for name, data, why in (
        ("roc", out.roc, "no reports/plots/roc.json (the evaluate stage writes it)"),
        ("confusion", out.confusion, "no confusion matrix in reports/metrics.json"),
        ("export_latency", out.export_latency, "reports/export.json has no latency distribution (export again)"),
    ):
        if not data:
            out.why_missing[name] = why


def load_plot(ws: Workspace, version: str, mismatch: str | None, out: Plots) -> None:
    """The load test's percentiles over time: the version's staging gate, else the pipeline's loadtest stage."""
    staged = ws.report(f"loadtest_staging_v{version}.json")
    candidates = [(staged, f"staging load-test gate (reports/loadtest_staging_v{version}.json)")]
    if mismatch is None:
        candidates.append((ws.report("loadtest.json"), "the pipeline's loadtest stage (reports/loadtest.json)"))
    for report, source in candidates:
        if report.get("history"):
            out.load_history, out.load_slo, out.load_source = report["history"], report.get("slo") or {}, source
            return
    out.why_missing["load_history"] = (
        "no load-test report of this version with a history (reports from before the history was kept have none)"
    )


def drift_plot(ctx: ReportContext, mismatch: str | None, places: list[tuple[str, str, float]], out: Plots) -> None:
    """PSI per feature: the test split against the reference, and the window the busiest slot served."""
    ws = ctx.workspace
    names = [str(n) for n in ws.json("models/model_card.json").get("feature_names", [])]
    if mismatch is None and names:
        reference = ws.home / "data" / "reference_stats.json"
        if not reference.is_file():
            reference = ws.home / "models" / "reference_stats.json"
        test, noise = split_psi(ws.home / "data" / "prepared" / "test.csv", reference, names)
        if test:
            out.drift["test split"], out.drift_noise["test split"] = test, noise
    slot = busiest(places)
    if slot is not None and ctx.serving is not None:
        page = ctx.serving.metrics_page(*slot)
        served = served_psi(page) if page else {}
        if served:
            out.drift[f"served now ({slot[0]}/{slot[1]})"] = served
    if not out.drift:
        out.why_missing["drift"] = "no test split and reference of this version here, and it serves nowhere now"


def history(records: list[dict[str, Any]], version: str) -> list[HistoryRow]:
    """Every audit record that moved the version or moved something away from it, oldest first."""
    rows = []
    for r in records:
        if version not in (str(r.get("to_version")), str(r.get("from_version"))):
            continue
        weights = ", ".join(f"{k} {float(v):g}%" for k, v in (r.get("weights") or {}).items())
        rows.append(
            HistoryRow(
                when=str(r.get("when") or utc(r.get("at")) or ""),
                by=str(r.get("by") or ""),
                action=str(r.get("action") or ""),
                environment=str(r.get("environment") or ""),
                alias=r.get("alias"),
                from_version=r.get("from_version"),
                to_version=r.get("to_version"),
                weights=weights,
                outcome=str(r.get("outcome") or ""),
                reason=str(r.get("reason") or ""),
                forced=r.get("outcome") == "forced",
            )
        )
    return rows


def no_canary(records: list[dict[str, Any]], version: str) -> str:
    """What the canary section says when the version had none."""
    forced = any(
        r.get("action") == "promote" and r.get("to_version") == version and r.get("outcome") == "forced"
        for r in records
    )
    suffix = " It reached production without one (forced)." if forced else ""
    return f"Version {version} has had no canary yet.{suffix}"


def compare(ctx: ReportContext, facts: VersionFacts) -> Comparison:
    """Against the base branch when one is given, else against production (or the version it replaced)."""
    tolerance = (ctx.params.get("gates") or {}).get("champion_tolerance")
    if ctx.base:
        return comparison.against_base(ctx.base, ctx.workspace.report("metrics.json"), ctx.params)
    return comparison.against_registry(ctx.view, facts, ctx.records, float(tolerance) if tolerance else None)

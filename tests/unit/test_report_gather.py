"""The release report's data, gathered from a synthetic workspace written the way the pipeline, the release
commands and the audit log write theirs: identity, gates (failed first), plots, canary timeline, history and the
comparison with production. ``story_context`` is also the browser test's input (tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlrelease.core.errors import UserError
from mlrelease.core.params import CanaryParams
from release.analysis import Measurement
from release.audit import AuditLog, AuditRecord
from release.report.gather import ReportContext, gather
from release.report.sources import VersionFacts, Workspace, resolve_version

MODEL = "breast-cancer-classifier"
SHA = {"1": "a" * 64, "2": "b" * 64}
FEATURES = [f"feature {i:02d}" for i in range(8)]
T0 = 1_790_000_000.0


def write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def pipeline_reports(home: Path, version: str = "2", failed_gate: bool = False) -> None:
    """reports/, models/ and data/ as `dvc repro` leaves them after registering ``version``."""
    r = home / "reports"
    write(r / "registration.json", {"model_name": MODEL, "version": int(version), "artifact_sha256": SHA[version]})
    write(
        home / "models" / "model_card.json", {"sha256": SHA[version], "classes": ["0", "1"], "feature_names": FEATURES}
    )
    write(home / "models" / "train_run.json", {"run_id": "run2", "best_epoch": 38, "best_val_loss": 0.07})
    write(
        r / "metrics.json",
        {"accuracy": 0.9737, "roc_auc": 0.9917, "f1": 0.979, "precision": 0.986, "recall": 0.972,
         "n_test": 114, "confusion_matrix": [[41, 1], [2, 70]]},
    )  # fmt: skip
    fpr = np.linspace(0, 1, 30)
    write(r / "plots" / "roc.json", {"roc": [{"fpr": f, "tpr": min(1.0, f**0.1), "threshold": 1 - f} for f in fpr]})
    history = [
        {"epoch": e, "train_loss": 0.6 * 0.93**e + 0.01, "val_loss": 0.55 * 0.94**e + 0.05, "val_accuracy": 0.9}
        for e in range(1, 59)
    ]
    write(r / "train_history.json", {"history": history})
    gates = [
        {"name": "min_accuracy", "value": 0.9737, "threshold": ">= 0.95", "passed": True, "detail": ""},
        {"name": "min_roc_auc", "value": 0.9917 if not failed_gate else 0.97, "threshold": ">= 0.98",
         "passed": not failed_gate, "detail": ""},
    ]  # fmt: skip
    write(r / "evaluate_gates.json", {"stage": "evaluate", "passed": not failed_gate, "gates": gates})
    latency = {"batch_1": [[q, 0.02 + q / 2000] for q in range(0, 101, 5)]}
    latency["batch_32"] = [[q, 0.03 + q / 1500] for q in range(0, 101, 5)]
    export_gates = [{"name": "latency_p95_ms_batch1", "value": 0.07, "threshold": "<= 150.0", "passed": True}]
    write(r / "export.json", {"stage": "export", "passed": True, "gates": export_gates,
                              "latency_distribution_ms": latency})  # fmt: skip
    tables = [{"name": f"data/prepared/{s}.csv", "rows": n, "valid": True, "failures": []}
              for s, n in (("train", 341), ("val", 114), ("test", 114))]  # fmt: skip
    write(r / "data_validation.json", {"valid": True, "tables": tables})
    write(r / "loadtest.json", loadtest_report(rps=498.0))
    drift_inputs(home)


def loadtest_report(rps: float) -> dict[str, Any]:
    """A Locust gate report with its per-second history, as deploy.loadtest.runner writes it."""
    history = [
        {"t": float(t), "users": 10.0, "rps": rps * min(1, t / 3), "failures_per_s": 0.0,
         "p50_ms": 4.0, "p95_ms": 6.0 + t % 3, "p99_ms": 9.0 + t % 4}
        for t in range(10)
    ]  # fmt: skip
    stats = {"requests": rps * 9, "failures": 0.0, "error_rate": 0.0, "rps": rps, "p50_ms": 4.0, "p95_ms": 7.0,
             "p99_ms": 11.0, "max_ms": 20.0, "mean_ms": 4.2}  # fmt: skip
    slo = {"p95_ms": 50.0, "p99_ms": 100.0, "max_error_rate": 0.001, "min_rps": 200.0}
    return {"stats": stats, "slo": slo, "history": history, "breaches": [], "passed": True}


def drift_inputs(home: Path) -> None:
    """The test split, and the reference bins the validate stage saves (pipelines.validate.reference_stats)."""
    from pipelines.validate import reference_stats

    rng = np.random.default_rng(3)
    train = pd.DataFrame(rng.normal(size=(400, len(FEATURES))), columns=FEATURES)
    (home / "data").mkdir(parents=True, exist_ok=True)
    (home / "data" / "reference_stats.json").write_text(reference_stats(train, FEATURES, 10).model_dump_json())
    test = pd.DataFrame(rng.normal(size=(114, len(FEATURES))), columns=FEATURES)
    test["target"] = 1
    (home / "data" / "prepared").mkdir(parents=True, exist_ok=True)
    test.to_csv(home / "data" / "prepared" / "test.csv", index=False)


def measurements() -> list[dict[str, Any]]:
    """Four canary intervals as release.analysis measures them: 5% passed, 25% inconclusive then passed, 50%."""
    rows = [
        Measurement(5.0, "passed", [], 42, 790, 0.0, 0.0, 14.0, 12.0, 0.01),
        Measurement(25.0, "inconclusive", ["too few requests (canary 12, stable 40, need 20 each)"], 12, 40,
                    0.0, 0.0, 13.0, 12.5, None),
        Measurement(25.0, "passed", [], 210, 640, 0.0, 0.001, 15.0, 13.0, 0.02),
        Measurement(50.0, "passed", [], 420, 410, 0.002, 0.001, 16.0, 13.5, 0.015),
    ]  # fmt: skip
    for m in rows:
        m.canary_judged, m.stable_judged = m.canary_requests, m.stable_requests
        m.canary_client_error_rate, m.stable_client_error_rate = 0.0, 0.0
        m.driver_requests, m.driver_failed, m.driver_error_rate = 1500, 0, 0.0
    return [m.as_dict() for m in rows]


def release_reports(home: Path) -> None:
    """What the release commands write for version 2: staging load gate, canary report, image build and scan."""
    r = home / "reports"
    write(r / "loadtest_staging_v2.json", loadtest_report(rps=480.0))
    write(r / "canary_v2.json", {"version": "2", "stable": "1", "params": CanaryParams().model_dump(),
                                 "aborted": None, "measurements": measurements()})  # fmt: skip
    build = {"model_version": "2", "image_ref": "localhost/bcc:2-abc1234", "image_digest": "sha256:" + "d" * 64,
             "image_size_mb": 612.4, "smoke": {"rows": 16, "max_abs_diff": 0.0, "passed": True}}  # fmt: skip
    write(r / "build.json", build)
    checks = [{"name": "bandit", "tool": "bandit", "status": "pass", "findings": []},
              {"name": "vulnerabilities", "tool": "pip-audit", "status": "not_checked", "findings": []}]  # fmt: skip
    write(r / "scan.json", {"image": build["image_ref"], "passed": True, "checks": checks})


def story_records(state_dir: Path) -> list[dict[str, Any]]:
    """The audit log of a release story: version 1 forced to production, version 2 staged, canaried and promoted."""
    log = AuditLog(state_dir)
    smoke = {"smoke": {"rows": 8, "status": 200, "model_version": "2"}, "loadtest": {"p99_ms": 11.0}}
    steps = [
        AuditRecord("promote", "staging", "alice", to_version="1", alias="staging", reason="gates passed"),
        AuditRecord("promote", "production", "alice", to_version="1", alias="production", outcome="forced",
                    reason="canary skipped; forced: first release"),
        AuditRecord("promote", "staging", "bob", to_version="2", from_version="1", alias="staging", evidence=smoke,
                    reason="smoke and load gates passed"),
        AuditRecord("alias", "production", "bob", to_version="2", from_version="1", alias="canary",
                    reason="canary started"),
        *[AuditRecord("traffic", "production", "bob", to_version="2", from_version="1",
                      weights={"stable": 100 - w, "canary": w}, reason=f"canary step {w}%") for w in (5, 25, 50)],
        AuditRecord("canary-passed", "production", "bob", to_version="2", from_version="1", alias="canary",
                    weights={"stable": 100}, evidence={"report": "reports/canary_v2.json",
                                                       "measurements": measurements()},
                    reason="analysis passed at every step; canary kept warm at weight 0"),
        AuditRecord("promote", "production", "carol", to_version="2", from_version="1", alias="production",
                    weights={"stable": 100}, reason="canary passed against 1; reason: approved in GitHub"),
    ]  # fmt: skip
    for n, record in enumerate(steps):
        record.at = T0 + 600 * n
        log.append(record)
    return log.records()


class FakeView:
    """The registry as the report reads it: versions 1 and 2, 2 on production."""

    model_name = MODEL

    def __init__(self, aliases: dict[str, str] | None = None) -> None:
        self.aliases = {"production": "2"} if aliases is None else aliases
        self.tags = {
            v: {"artifact_sha256": SHA[v], "git_commit": f"{v * 7}", "data_hash": "md5:cafe.dir",
                "params_hash": f"p{v}", "metric.accuracy": acc, "metric.roc_auc": auc, "metric.f1": "0.97",
                "param.train.batch_size": batch}
            for v, acc, auc, batch in (("1", "0.964912", "0.993056", "32"), ("2", "0.973684", "0.991733", "128"))
        }  # fmt: skip
        self.tags["2"].update({"image_digest": "sha256:" + "d" * 64, "image_ref": "localhost/bcc:2-abc1234"})
        self.tags["2"].update({"mlrelease.canary_passed": "true", "mlrelease.canary_passed_against": "1"})

    def versions(self) -> list[str]:
        return ["1", "2"]

    def alias(self, alias: str) -> str | None:
        return self.aliases.get(alias)

    def facts(self, version: str) -> VersionFacts:
        aliases = sorted(a for a, v in self.aliases.items() if v == version)
        return VersionFacts(MODEL, version, aliases, dict(self.tags[version]), int(T0 * 1000), f"run{version}")

    def loss_history(self, run_id: str) -> list[dict[str, float]]:
        return [{"epoch": float(e), "train_loss": 1 / e, "val_loss": 1.2 / e} for e in range(1, 20)]


class FakeServing:
    """Version 2 serves production's stable slot, version 1 stays warm; the stable slot's page has PSI gauges."""

    def where(self, version: str) -> list[tuple[str, str, float]]:
        return {"2": [("production", "stable", 100.0)], "1": [("production", "previous", 0.0)]}.get(version, [])

    def metrics_page(self, environment: str, slot: str) -> str | None:
        lines = ["# HELP mlrelease_feature_drift_psi PSI", "# TYPE mlrelease_feature_drift_psi gauge"]
        lines += [
            f'mlrelease_feature_drift_psi{{feature="{name}"}} {0.02 * (i + 1)}' for i, name in enumerate(FEATURES)
        ]
        return "\n".join(lines) + "\n"


def story_context(home: Path, failed_gate: bool = False) -> ReportContext:
    """A workspace after a full release story of version 2, and the fakes of registry and deployment."""
    pipeline_reports(home, failed_gate=failed_gate)
    release_reports(home)
    records = story_records(home / ".mlrelease")
    params = {
        "canary": CanaryParams().model_dump(),
        "gates": {"champion_tolerance": 0.01},
        "build": {"max_image_mb": 1500},
    }
    return ReportContext(Workspace(home), FakeView(), records, params, FakeServing(), clock=lambda: T0 + 9000)


def test_a_full_release_story_fills_every_section(tmp_path: Path) -> None:
    report = gather(story_context(tmp_path), "2")
    identity = report.identity
    assert (identity.version, identity.aliases, identity.artifact_sha256) == ("2", ["production"], SHA["2"])
    assert identity.image_digest == "sha256:" + "d" * 64 and identity.git_commit == "2222222"
    assert identity.serving == ["production/stable: 100% of traffic"]
    assert "canary passed against version 1" in identity.flags
    stages = [g.stage for g in report.gates]
    assert set(stages) == {"data", "evaluate", "export", "loadtest", "image", "scan", "staging", "canary"}
    assert report.failed_gates == 0 and report.notes == []
    p = report.plots
    assert p.roc and p.confusion == [[41, 1], [2, 70]] and len(p.losses) == 58 and p.best_epoch == 38
    assert set(p.export_latency) == {"batch_1", "batch_32"} and len(p.load_history) == 10
    assert "staging load-test gate" in p.load_source  # the version's own gate before the pipeline's
    assert set(p.drift) == {"test split", "served now (production/stable)"} and p.drift_noise["test split"] > 0
    assert p.why_missing == {}


def test_the_canary_timeline_has_each_interval_and_check(tmp_path: Path) -> None:
    report = gather(story_context(tmp_path), "2")
    (run,) = report.canary_runs
    assert (run.outcome, run.against, run.by, run.forced) == ("passed", "1", "bob", False)
    assert [i.weight for i in run.intervals] == [5, 25, 25, 50]
    assert [i.verdict for i in run.intervals] == ["passed", "inconclusive", "passed", "passed"]
    first = {c.name: c for c in run.intervals[0].checks}
    assert first["p99 latency"].limit == pytest.approx(min(500.0, 12.0 * 2 + 25)) and not first["p99 latency"].over
    assert first["traffic share"].limit == pytest.approx(0.05 * 0.5) and not first["traffic share"].over
    assert first["errors (5xx)"].limit == pytest.approx(0.005)
    short = {c.name: c for c in run.intervals[1].checks}
    assert short["requests (each slot)"].over and "too few requests" in run.intervals[1].reasons[0]
    assert "driven load errors" in first


def test_history_says_who_when_from_to_why_and_forced(tmp_path: Path) -> None:
    report = gather(story_context(tmp_path), "1")
    forced = [h for h in report.history if h.forced]
    assert [(h.action, h.environment, h.by) for h in forced] == [("promote", "production", "alice")]
    assert forced[0].reason.endswith("first release") and forced[0].when.startswith("2026-")
    assert any(h.action == "traffic" and h.weights == "canary 5%, stable 95%" for h in report.history)
    assert report.canary_note == "Version 1 has had no canary yet. It reached production without one (forced)."


def test_production_is_compared_with_the_version_it_replaced(tmp_path: Path) -> None:
    c = gather(story_context(tmp_path), "2").comparison
    assert c is not None and c.against == "version 1, which it replaced in production"
    rows = {r.name: r for r in c.rows}
    assert rows["accuracy"].better is True and rows["roc_auc"].better is False and not rows["roc_auc"].failed
    assert rows["f1"].better is None and rows["accuracy"].delta == pytest.approx(0.973684 - 0.964912)
    names = {d.name for d in c.differences}
    assert {"git_commit", "params_hash", "artifact_sha256", "params: train.batch_size"} <= names


def test_a_candidate_is_compared_with_production(tmp_path: Path) -> None:
    ctx = story_context(tmp_path)
    ctx.view = FakeView({"production": "1", "candidate": "2"})
    c = gather(ctx, "2").comparison
    assert c is not None and c.against == "production (version 1)"
    ctx.view = FakeView({"candidate": "2"})
    c = gather(ctx, "2").comparison
    assert c is not None and c.rows == [] and "no production version yet" in c.notes[0]


def test_failed_gates_come_first(tmp_path: Path) -> None:
    report = gather(story_context(tmp_path, failed_gate=True), "2")
    assert report.gates[0].stage == "evaluate" and report.failed_gates == 1
    assert [g.passed for g in report.gates[0].gates] == [False, True]
    assert report.gates[0].gates[0].name == "min_roc_auc"


def test_reports_of_another_model_are_not_shown_as_this_ones(tmp_path: Path) -> None:
    ctx = story_context(tmp_path)
    report = gather(ctx, "1")
    assert report.notes and "describe another model" in report.notes[0]
    assert {g.stage for g in report.gates} <= {"staging", "canary", "image", "scan"}
    assert report.plots.roc == [] and "describe another model" in report.plots.why_missing["roc"]
    assert len(report.plots.losses) == 19  # from the version's training run in the registry instead
    assert report.identity.serving == ["production/previous: warm, no traffic"]


def test_a_later_run_that_registered_nothing_makes_the_reports_stale(tmp_path: Path) -> None:
    import os

    ctx = story_context(tmp_path)
    later = (tmp_path / "reports" / "registration.json").stat().st_mtime + 60
    os.utime(tmp_path / "reports" / "evaluate_gates.json", (later, later))
    report = gather(ctx, "2")
    assert "rewritten by a later pipeline run" in report.notes[0]


def test_the_version_to_report_is_resolved_or_refused_in_one_line(tmp_path: Path) -> None:
    view = FakeView({"production": "1", "candidate": "2"})
    assert resolve_version(view, None, {"model_name": MODEL, "version": 1}) == "1"
    assert resolve_version(view, None, {}) == "2"
    assert resolve_version(view, "production", {}) == "1"
    with pytest.raises(UserError, match=r"--version 7: no such version .*registered versions: 1, 2"):
        resolve_version(view, "7", {})
    with pytest.raises(UserError, match="no such version or alias"):
        resolve_version(view, "canary", {})
    view.versions = lambda: []  # type: ignore[method-assign]
    with pytest.raises(UserError, match="has no version"):
        resolve_version(view, None, {})


def test_a_workspace_without_reports_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no reports/"):
        Workspace(tmp_path).require_reports()


def test_a_pull_request_is_compared_with_the_base_branchs_committed_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.compare as compare

    base = {"accuracy": 0.99, "roc_auc": 0.995, "f1": 0.98, "precision": 0.98, "recall": 0.98}
    asked: list[tuple[str, dict[str, Any]]] = []

    def committed(ref: str, head: dict[str, Any], params: dict[str, Any]) -> compare.Comparison:
        asked.append((ref, head))
        rows = compare.compare_metrics(base, head, 0.01)
        return compare.Comparison(rows, 0.01, ["gates.min_accuracy 0.95 -> 0.9"], "origin/main's params.yaml")

    monkeypatch.setattr(compare, "compare_with", committed)
    ctx = story_context(tmp_path)
    ctx.base = "origin/main"
    c = gather(ctx, "2").comparison
    assert asked[0][0] == "origin/main" and asked[0][1]["accuracy"] == 0.9737
    assert c is not None and c.against == "origin/main's committed metrics"
    rows = {r.name: r for r in c.rows}
    assert rows["accuracy"].failed and rows["accuracy"].other == 0.99 and not rows["roc_auc"].failed
    assert [(d.name, d.this) for d in c.differences] == [("loosened", "gates.min_accuracy 0.95 -> 0.9")]

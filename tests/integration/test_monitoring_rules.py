"""deploy/monitoring: promtool checks the configuration and the rules and runs the alerts' unit tests; every alert
is tested firing and quiet and links a runbook that exists; the analysis' PromQL parses; and every metric the rules,
the dashboard and the PromQL name exists on a running server's /metrics (or the release exporter's)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from mlrelease.core.params import CanaryParams
from release import promql
from release.audit import AuditLog, AuditRecord
from release.journal import Journal, Operation
from release.release_metrics import render
from release.states import Command
from tests.serving_helpers import MODEL_NAME, run_server, shared_bundle

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "mlrelease.yml"
RULE_TESTS = MONITORING / "tests" / "mlrelease_test.yml"
DASHBOARD = MONITORING / "grafana" / "mlrelease.json"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool (make debs)")
METRIC = re.compile(r"(?<![\w$])((?:mlrelease|process|python)_[A-Za-z0-9_]+)")
PROMETHEUS_OWN = {"up", "ALERTS"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, check=False)


def alerts() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def analysis_queries() -> list[str]:
    """Every query of release.promql, rendered for a canary and a stable slot."""
    canary, stable = {"environment": "production", "slot": "canary"}, {"environment": "production", "slot": "stable"}
    counts = [
        f(canary)
        for f in (
            promql.requests_by_status,
            promql.latency_buckets,
            promql.predicted_classes,
            promql.scrape_health,
            promql.last_scrape,
        )
    ]
    checks = [c.query for c in promql.analysis_checks(canary, stable, "30s", CanaryParams(), 25)]
    return counts + checks


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]


@needs_promtool
def test_promtool_accepts_the_configuration_and_the_rules() -> None:
    for args in (("check", "config", str(MONITORING / "prometheus.yml")), ("check", "rules", str(RULES))):
        done = promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_the_alert_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_quiet_and_links_a_runbook() -> None:
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = {str(rule["alert"]) for rule in alerts()}
    assert names == firing, names ^ firing
    assert names == quiet, names ^ quiet
    team = (REPO / "docs" / "team.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", team, re.M)
    }
    for rule in alerts():
        url = str(rule["annotations"]["runbook_url"])  # type: ignore[index]
        path, _, anchor = url.partition("#")
        assert path == "docs/team.md" and anchor in anchors, f"{rule['alert']}: runbook {url} not in docs/team.md"


@needs_promtool
def test_the_analysis_promql_parses(tmp_path: Path) -> None:
    """Every query release.promql renders is valid PromQL (promtool parses it as a recording rule)."""
    rules = [{"record": f"mlrelease:check_{i}", "expr": q} for i, q in enumerate(analysis_queries())]
    path = tmp_path / "analysis.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "analysis", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def metric_names(page: str) -> set[str]:
    """Sample names on a /metrics page, with a histogram's and a counter's series names from its TYPE line too."""
    names = set(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", page, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\w+)", page, re.M):
        names |= {name, f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name}
    return names


@pytest.fixture(scope="module")
def server_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running server's /metrics after one prediction (labelled series appear at first use)."""
    bundle = shared_bundle(tmp_path_factory, 0)
    card = json.loads((bundle / "model_card.json").read_text())
    with run_server(bundle, tmp_path_factory.mktemp("metric-names")) as server:
        body = {"instances": [[0.0] * len(card["feature_names"])]}
        assert httpx.post(f"{server.url}/v1/models/{MODEL_NAME}:predict", json=body, timeout=10).status_code == 200
        yield httpx.get(f"{server.url}/metrics", timeout=10).text


def test_every_metric_named_by_rules_dashboard_and_analysis_exists(server_page: str, tmp_path: Path) -> None:
    AuditLog(tmp_path).append(AuditRecord("rollback", "production", "test"))
    Journal(tmp_path).set_operation(Operation(command=Command.PROMOTE_CANARY, version="2", pid=1, by="test"))
    exported = metric_names(server_page) | metric_names(render(tmp_path)) | PROMETHEUS_OWN
    used = {
        "rules": {m for rule in alerts() for m in METRIC.findall(str(rule["expr"]))} | {"up"},
        "dashboard": {m for q in dashboard_queries() for m in METRIC.findall(q)},
        "analysis": {m for q in analysis_queries() for m in METRIC.findall(q)} | set(promql.METRIC_NAMES),
    }
    for where, names in used.items():
        assert names, where
        assert names <= exported, f"{where} names metrics nothing exports: {sorted(names - exported)}"

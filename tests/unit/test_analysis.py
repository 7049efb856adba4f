"""Canary analysis: Prometheus parsing, quantiles, divergence, verdicts and Argo-style limits."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError

from registry.analysis import (
    Analysis,
    CanaryParams,
    Snapshot,
    delta,
    js_divergence,
    measure,
    parse_duration,
    parse_metrics,
    quantile,
)

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)


def server_metrics(ok: int, errors: int, seconds: float, classes: dict[str, int]) -> str:
    """A /metrics page with the serving contract's metric names, produced by prometheus_client itself."""
    reg = CollectorRegistry()
    requests = Counter("mlrelease_requests", "r", ["route", "status"], registry=reg)
    duration = Histogram("mlrelease_request_duration_seconds", "d", ["route"], buckets=BUCKETS, registry=reg)
    preds = Counter("mlrelease_predictions", "p", ["model_version", "class"], registry=reg)
    route = "/v1/models/{name}:predict"
    requests.labels(route, "200").inc(ok)
    requests.labels(route, "500").inc(errors)
    requests.labels("/ready", "200").inc(1000)  # not a prediction route: ignored
    for _ in range(ok + errors):
        duration.labels(route).observe(seconds)
    for cls, n in classes.items():
        preds.labels("7", cls).inc(n)
    return generate_latest(reg).decode()


def test_parse_metrics_reads_prediction_routes_only() -> None:
    snap = parse_metrics(server_metrics(90, 10, 0.003, {"benign": 60, "malignant": 30}))
    assert snap.requests == 100
    assert snap.errors == 10
    assert snap.classes == {"benign": 60, "malignant": 30}
    assert snap.buckets[0.005] == 100 and snap.buckets[0.001] == 0


def test_delta_and_counter_reset() -> None:
    before = parse_metrics(server_metrics(10, 0, 0.003, {"a": 10}))
    after = parse_metrics(server_metrics(50, 5, 0.003, {"a": 55}))
    d = delta(after, before)
    assert (d.requests, d.errors, d.classes["a"]) == (45, 5, 45)
    assert delta(before, after).requests == before.requests  # restarted server: counters start over


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.99, buckets) == pytest.approx(0.198)
    assert quantile(0.99, {}) is None
    assert quantile(0.99, {0.1: 0.0, float("inf"): 0.0}) is None


def test_js_divergence_bounds() -> None:
    assert js_divergence({"a": 5, "b": 5}, {"a": 50, "b": 50}) == pytest.approx(0.0)
    assert js_divergence({"a": 10}, {"b": 10}) == pytest.approx(1.0)
    assert js_divergence({}, {"a": 1}) is None


def params(**kw: object) -> CanaryParams:
    return CanaryParams(**{"min_requests": 20, **kw})


def snap(
    requests: float, errors: float = 0, seconds: float = 0.003, classes: dict[str, float] | None = None
) -> Snapshot:
    le = min(b for b in BUCKETS if b >= seconds)
    buckets = {b: (requests if b >= le else 0.0) for b in BUCKETS} | {float("inf"): requests}
    return Snapshot(requests, errors, buckets, classes or {"a": requests / 2, "b": requests / 2})


def test_no_data_is_inconclusive_never_a_pass() -> None:
    m = measure(snap(0), snap(100), 5, params())
    assert m.verdict == "inconclusive"
    assert measure(snap(100), snap(3), 5, params()).verdict == "inconclusive"


def test_healthy_canary_passes() -> None:
    m = measure(snap(100), snap(300), 25, params())
    assert m.verdict == "passed", m.reasons
    assert m.canary_error_rate == 0 and m.divergence == pytest.approx(0)


def test_errors_fail_unless_stable_errors_as_much() -> None:
    failed = measure(snap(100, errors=10), snap(300), 25, params())
    assert failed.verdict == "failed" and "error rate" in failed.reasons[0]
    both_bad = measure(snap(100, errors=10), snap(300, errors=30), 25, params())
    assert both_bad.verdict == "passed"


def test_slow_canary_fails_relative_to_stable() -> None:
    m = measure(snap(100, seconds=0.1), snap(300, seconds=0.003), 25, params())
    assert m.verdict == "failed" and "p99" in m.reasons[0]
    assert measure(snap(100, seconds=0.1), snap(300, seconds=0.1), 25, params()).verdict == "passed"


def test_divergent_predictions_fail() -> None:
    m = measure(snap(100, classes={"a": 100}), snap(300, classes={"a": 150, "b": 150}), 25, params())
    assert m.verdict == "failed" and "divergence" in m.reasons[0]


def test_failure_limit_has_argo_semantics() -> None:
    analysis = Analysis(params(failure_limit=1, inconclusive_limit=0))
    analysis.add(measure(snap(100, errors=50), snap(300), 5, analysis.params))
    assert analysis.aborted() is None  # one failure tolerated
    analysis.add(measure(snap(100, errors=50), snap(300), 5, analysis.params))
    assert "failure_limit 1" in (analysis.aborted() or "")
    quiet = Analysis(params(inconclusive_limit=0))
    quiet.add(measure(snap(0), snap(0), 5, quiet.params))
    assert "no data is never a pass" in (quiet.aborted() or "")


def test_params_are_strict() -> None:
    assert CanaryParams(interval="2m").interval == 120
    assert parse_duration("500ms") == 0.5
    with pytest.raises(ValidationError):
        CanaryParams(steps=[5, 60])
    with pytest.raises(ValidationError):
        CanaryParams(steps=[25, 5])
    with pytest.raises(ValidationError):
        CanaryParams(thresold=1)  # typo is refused
    with pytest.raises(ValidationError):
        CanaryParams(interval="soon")

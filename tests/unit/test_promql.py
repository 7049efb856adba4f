"""release.promql: the analysis' PromQL as pure functions of selectors, windows and thresholds (no Prometheus here;
tests/integration/test_prometheus_provider.py runs these queries against a real one)."""

from __future__ import annotations

import pytest

from mlrelease.core.params import CanaryParams
from release import promql

CANARY = {"environment": "production", "slot": "canary"}
STABLE = {"environment": "production", "slot": "stable"}


def test_selectors_quote_values_and_sort_labels() -> None:
    assert promql.selector({"slot": 'a"b\\c', "environment": "production"}, 'route=~"x"') == (
        '{environment="production", slot="a\\"b\\\\c", route=~"x"}'
    )
    assert promql.selector({}) == "{}"
    # Argo Rollouts template arguments pass through as they are
    assert promql.selector({"rollouts_pod_template_hash": "{{args.canary-hash}}"}) == (
        '{rollouts_pod_template_hash="{{args.canary-hash}}"}'
    )


@pytest.mark.parametrize(("seconds", "text"), [(30, "30s"), (2.5, "2500ms"), (120.0, "120s"), (0, "1ms")])
def test_windows_are_promql_durations(seconds: float, text: str) -> None:
    assert promql.duration(seconds) == text


def test_count_queries_sum_cumulative_counters_by_replica() -> None:
    route = 'route=~".*(predict|infer).*"'
    assert promql.requests_by_status(CANARY) == (
        f'sum by (instance, status) (mlrelease_requests_total{{environment="production", slot="canary", {route}}})'
    )
    assert promql.latency_buckets(CANARY).startswith(
        "sum by (instance, le) (mlrelease_request_duration_seconds_bucket{"
    )
    assert promql.predicted_classes(CANARY) == (
        'sum by (instance, class) (mlrelease_predictions_total{environment="production", slot="canary"})'
    )
    assert promql.scrape_health(CANARY) == 'up{environment="production", slot="canary"}'
    assert promql.last_scrape(CANARY) == 'timestamp(up{environment="production", slot="canary"})'


def test_a_status_never_answered_counts_as_zero_not_as_no_data() -> None:
    """No 5xx series yet is an error rate of 0; no judged request at all stays no data (NaN or empty)."""
    rate = promql.error_rate(CANARY, "30s")
    assert 'status=~"5.."' in rate and "or vector(0)" in rate
    assert rate.endswith(f"/ {promql.judged_requests(CANARY, '30s')})")
    assert 'status!="429"' in promql.judged_requests(CANARY, "30s")
    assert 'status!="429"' not in promql.requests(CANARY, "30s")


def test_the_checks_carry_the_canary_thresholds() -> None:
    params = CanaryParams(min_requests=25, max_error_rate=0.02, max_p99_latency_ms=300, max_divergence=0.1)
    checks = {c.name: c for c in promql.analysis_checks(CANARY, STABLE, "30s", params, weight=25)}
    assert list(checks) == [
        "canary-requests",
        "stable-requests",
        "error-rate",
        "error-rate-increase",
        "client-error-excess",
        "p99-latency",
        "p99-vs-stable",
        "traffic-share",
        "class-divergence",
    ]
    assert (checks["canary-requests"].passes, checks["canary-requests"].limit) == (">=", 25)
    assert {n for n, c in checks.items() if c.inconclusive} == {"canary-requests", "stable-requests"}
    assert checks["error-rate"].limit == 0.02 and checks["p99-latency"].limit == pytest.approx(0.3)
    assert checks["class-divergence"].limit == 0.1
    for name in ("error-rate-increase", "client-error-excess", "p99-vs-stable", "traffic-share", "class-divergence"):
        assert 'slot="canary"' in checks[name].query and 'slot="stable"' in checks[name].query, name
    assert "[30s]" in checks["error-rate"].query and 'slot="stable"' not in checks["error-rate"].query


def test_relative_checks_take_their_margins_from_the_params() -> None:
    p99 = promql.p99_excess_seconds(CANARY, STABLE, "1m", ratio=2.0, slack_s=0.025)
    assert p99.startswith("(histogram_quantile(0.99, ") and "* 2 + 0.025)" in p99
    share = promql.traffic_shortfall(CANARY, STABLE, "1m", weight=20, share=0.5, z=3.0)
    assert share.startswith("clamp_max((0.1 - ") and "sqrt(0.16 / " in share and "- 3))" in share
    excess = promql.client_error_excess(CANARY, STABLE, "1m", increase=0.01, z=3.0)
    assert "- 0.01)" in excess and "or vector(0)" in excess  # no 4xx at all: no noise, so no excess


def test_divergence_is_jensen_shannon_in_bits_over_both_slots_classes() -> None:
    js = promql.class_divergence(CANARY, STABLE, "1m")
    assert "sum by (class) (increase(mlrelease_predictions_total" in js and " or 0 * " in js
    assert js.endswith(f"* {promql.LOG2_E!r})") and js.count("ln(") == 2

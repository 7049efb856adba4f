"""The canary analysis in PromQL: pure functions of label selectors, windows and thresholds that return query text.

Two kinds of query, over the serving contract's metrics (docs/serving.md) and the prediction routes only:

- **Counts** (``requests_by_status``, ``latency_buckets``, ``predicted_classes``, ``scrape_health``,
  ``last_scrape``): a slot's cumulative counters summed by ``instance`` (one replica) and the label the analysis
  needs, for instant queries. :class:`release.metrics_provider.PrometheusProvider` reads them at both ends of an
  interval and hands their difference to :mod:`release.analysis`, the judgement the direct scrape feeds too.
- **Checks** (:func:`analysis_checks` and the functions it composes): one number per query, each one of the
  analysis' figures over a window, for a metric of a Kubernetes Argo Rollouts ``AnalysisTemplate``
  (``successCondition: result[0] <= LIMIT``). They are the analysis' checks with two differences: ``increase()``
  extrapolates to the window's edges (shares are unaffected, counts slightly), and the chi-square test that keeps
  sampling noise out of the divergence check has no PromQL form (use a larger ``min_requests`` there).

An empty result is no data: treat it as inconclusive, never a pass (argo-rollouts#1466, #180). A ratio with no
requests behind it is NaN, which no ``<=`` condition passes either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mlrelease.core.params import CanaryParams

Labels = Mapping[str, str]

REQUESTS = "mlrelease_requests_total"
LATENCY_BUCKETS = "mlrelease_request_duration_seconds_bucket"
PREDICTIONS = "mlrelease_predictions_total"
#: the routes the analysis counts (release.analysis: a route naming "predict" or "infer")
PREDICTION_ROUTES = ".*(predict|infer).*"
#: every metric the analysis' PromQL reads ("up" is Prometheus' own, one per scraped replica)
METRIC_NAMES = (REQUESTS, LATENCY_BUCKETS, PREDICTIONS, "up")
LOG2_E = math.log2(math.e)  # natural logarithms (PromQL's ln) to bits


def _quote(value: str) -> str:
    """A label value as a PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def selector(labels: Labels, *matchers: str) -> str:
    """``{k="v", ...}`` of equality matchers (sorted), then the raw ``matchers`` (``route=~"..."``)."""
    parts = [f"{name}={_quote(value)}" for name, value in sorted(labels.items())]
    return "{" + ", ".join([*parts, *matchers]) + "}"


def duration(seconds: float) -> str:
    """A PromQL duration for a window of ``seconds`` (``30s``, ``1500ms``; whole milliseconds, at least 1 ms)."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _routes(*more: str) -> tuple[str, ...]:
    return (f"route=~{_quote(PREDICTION_ROUTES)}", *more)


# ----- counts: cumulative counters per replica, read by instant queries ---------------------------------------------
def requests_by_status(labels: Labels) -> str:
    """Prediction requests so far, per replica and status."""
    return f"sum by (instance, status) ({REQUESTS}{selector(labels, *_routes())})"


def latency_buckets(labels: Labels) -> str:
    """The prediction latency histogram's cumulative buckets so far, per replica and ``le``."""
    return f"sum by (instance, le) ({LATENCY_BUCKETS}{selector(labels, *_routes())})"


def predicted_classes(labels: Labels) -> str:
    """Predicted-class counts so far, per replica and class (every model version the replica served)."""
    return f"sum by (instance, class) ({PREDICTIONS}{selector(labels)})"


def scrape_health(labels: Labels) -> str:
    """Whether Prometheus' last scrape of each replica got its /metrics page (1) or not (0)."""
    return f"up{selector(labels)}"


def last_scrape(labels: Labels) -> str:
    """When Prometheus last scraped each replica (unix seconds)."""
    return f"timestamp(up{selector(labels)})"


# ----- checks: one figure over a window --------------------------------------------------------------------------
def _increase(metric: str, labels: Labels, window: str, *matchers: str) -> str:
    return f"sum(increase({metric}{selector(labels, *matchers)}[{window}]))"


def _or_zero(expr: str) -> str:
    """``expr``, or 0 when it has no series (a status never answered has no counter yet: that is 0, not no data)."""
    return f"({expr} or vector(0))"


def _unless_nan(expr: str, default: float) -> str:
    """``expr``, or ``default`` where it is NaN (NaN is the one value not equal to itself)."""
    return f"(({expr}) == ({expr}) or vector({default:g}))"


def requests(labels: Labels, window: str) -> str:
    """Prediction requests over the window, 429s included (the traffic share's counts)."""
    return _increase(REQUESTS, labels, window, *_routes())


def judged_requests(labels: Labels, window: str) -> str:
    """Prediction requests over the window but 429s (answered before the model): the base of every share, and the
    ``min_requests`` check (fewer is inconclusive)."""
    return _increase(REQUESTS, labels, window, *_routes('status!="429"'))


def error_rate(labels: Labels, window: str) -> str:
    """5xx share of the judged requests."""
    errors = _or_zero(_increase(REQUESTS, labels, window, *_routes('status=~"5.."')))
    return f"({errors} / {judged_requests(labels, window)})"


def client_error_rate(labels: Labels, window: str) -> str:
    """4xx share (429 aside) of the judged requests."""
    rejected = _or_zero(_increase(REQUESTS, labels, window, *_routes('status=~"4.."', 'status!="429"')))
    return f"({rejected} / {judged_requests(labels, window)})"


def error_rate_increase(canary: Labels, stable: Labels, window: str) -> str:
    """The canary's 5xx share minus stable's."""
    return f"({error_rate(canary, window)} - {error_rate(stable, window)})"


def client_error_z(canary: Labels, stable: Labels, window: str) -> str:
    """Standard errors by which the canary's 4xx share exceeds stable's (two-proportion z-test, pooled share)."""
    c_rate, s_rate = client_error_rate(canary, window), client_error_rate(stable, window)
    c_n, s_n = judged_requests(canary, window), judged_requests(stable, window)
    pooled = f"(({c_rate} * {c_n} + {s_rate} * {s_n}) / ({c_n} + {s_n}))"
    noise = f"sqrt({pooled} * (1 - {pooled}) * (1 / {c_n} + 1 / {s_n}))"
    return f"(({c_rate} - {s_rate}) / {noise})"


def client_error_excess(canary: Labels, stable: Labels, window: str, increase: float, z: float) -> str:
    """At most 0 unless the canary's 4xx share is over stable's plus ``increase`` and by more than ``z`` standard
    errors (both, as the analysis wants): the smaller of the two margins. No 4xx at all (no noise) is no excess."""
    margin = f"({client_error_rate(canary, window)} - {client_error_rate(stable, window)} - {increase:g})"
    zscore = _unless_nan(client_error_z(canary, stable, window), 0.0)
    return f"clamp_max({margin}, scalar({zscore} - {z:g}))"


def latency_quantile(labels: Labels, window: str, q: float = 0.99) -> str:
    """The prediction latency's ``q`` quantile over the window, seconds (histogram_quantile, as the analysis)."""
    buckets = f"sum by (le) (increase({LATENCY_BUCKETS}{selector(labels, *_routes())}[{window}]))"
    return f"histogram_quantile({q:g}, {buckets})"


def p99_excess_seconds(canary: Labels, stable: Labels, window: str, ratio: float, slack_s: float) -> str:
    """The canary's p99 minus stable's p99 times ``ratio`` + ``slack_s``: at most 0 passes."""
    limit = f"({latency_quantile(stable, window)} * {ratio:g} + {slack_s:g})"
    return f"({latency_quantile(canary, window)} - {limit})"


def traffic_share(canary: Labels, stable: Labels, window: str) -> str:
    """The canary's share of both slots' prediction requests."""
    return f"({requests(canary, window)} / ({requests(canary, window)} + {requests(stable, window)}))"


def traffic_shortfall(canary: Labels, stable: Labels, window: str, weight: float, share: float, z: float) -> str:
    """At most 0 unless the canary answered under ``share`` of its weight's share of the requests and by more than
    ``z`` standard errors of a binomial at that weight (nginx retried the rest at stable): the smaller margin."""
    expected = weight / 100.0
    got, total = traffic_share(canary, stable, window), f"({requests(canary, window)} + {requests(stable, window)})"
    zscore = f"(({expected:g} - {got}) / sqrt({expected * (1 - expected):g} / {total}))"
    return f"clamp_max(({expected * share:g} - {got}), scalar({zscore} - {z:g}))"


def _shares(labels: Labels, window: str) -> str:
    counts = f"sum by (class) (increase({PREDICTIONS}{selector(labels)}[{window}]))"
    return f"({counts} / scalar(sum(increase({PREDICTIONS}{selector(labels)}[{window}]))))"


def class_divergence(canary: Labels, stable: Labels, window: str) -> str:
    """Jensen-Shannon divergence (base 2) of the two slots' predicted-class shares; a class only one slot predicted
    counts as share 0 in the other."""
    c_shares, s_shares = _shares(canary, window), _shares(stable, window)
    p, q = f"({c_shares} or 0 * {s_shares})", f"({s_shares} or 0 * {c_shares})"
    m = f"(({p} + {q}) / 2)"

    def kl(x: str) -> str:
        return f"sum(({x} > 0) * ln(({x} > 0) / {m}))"

    return f"((0.5 * {kl(p)} + 0.5 * {kl(q)}) * {LOG2_E!r})"


@dataclass(frozen=True)
class Check:
    """One figure the analysis judges: ``query`` passes when its value is ``passes`` ``limit`` (``<=`` or ``>=``);
    ``inconclusive``: failing it means too little data, not a bad canary."""

    name: str
    query: str
    passes: Literal["<=", ">="]
    limit: float
    inconclusive: bool = False


def analysis_checks(canary: Labels, stable: Labels, window: str, params: CanaryParams, weight: float) -> list[Check]:
    """Every check of one interval at canary ``weight`` percent, with ``params``' thresholds."""
    return [
        Check("canary-requests", judged_requests(canary, window), ">=", params.min_requests, inconclusive=True),
        Check("stable-requests", judged_requests(stable, window), ">=", params.min_requests, inconclusive=True),
        Check("error-rate", error_rate(canary, window), "<=", params.max_error_rate),
        Check("error-rate-increase", error_rate_increase(canary, stable, window), "<=", params.max_error_rate_increase),
        Check(
            "client-error-excess",
            client_error_excess(canary, stable, window, params.max_client_error_rate_increase, params.client_error_z),
            "<=",
            0.0,
        ),
        Check("p99-latency", latency_quantile(canary, window), "<=", params.max_p99_latency_ms / 1000.0),
        Check(
            "p99-vs-stable",
            p99_excess_seconds(canary, stable, window, params.max_p99_ratio, params.p99_slack_ms / 1000.0),
            "<=",
            0.0,
        ),
        Check(
            "traffic-share",
            traffic_shortfall(canary, stable, window, weight, params.min_traffic_share, params.traffic_share_z),
            "<=",
            0.0,
        ),
        Check("class-divergence", class_divergence(canary, stable, window), "<=", params.max_divergence),
    ]

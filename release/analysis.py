"""Canary analysis as pure judgement over measurements (no I/O): compare the canary slot with the stable slot
from the servers' own Prometheus metrics, as the canary transition measured them.

Semantics borrowed from Flagger and Argo Rollouts rather than invented: every ``interval`` one *measurement* is taken
per slot (deltas of counters between two scrapes). A measurement is ``failed`` when a check is over its threshold,
when the canary does not answer /metrics, or when the analysis' own load through the router fails more often than
``max_error_rate``. Besides 5xx, the canary's client errors (4xx but 429) are compared with stable's: both slots get
the same traffic, so a canary that rejects requests stable accepts (a changed input contract) fails, while clients'
own mistakes, which hit both alike, do not. A measurement is ``inconclusive`` when a slot served fewer than
``min_requests`` predictions (429s aside: they never reach the model), the stable slot does not answer (though a
canary over the absolute ceilings ``max_error_rate`` or ``max_p99_latency_ms`` still fails, as those need no
comparison), or the analysis' own valid requests were refused while the canary refuses no more of them than stable (a
401 for a missing API key: the slots then count refusals, not predictions). No data is never a pass (flagger#1098).
The analysis fails once failed measurements exceed ``failure_limit`` or inconclusive ones exceed
``inconclusive_limit`` (Argo's ``failureLimit``/``inconclusiveLimit``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from mlrelease.core.params import CanaryParams
from release.stats import ClassTable, class_table, combined_p_value, homogeneity_p_value, js_divergence, quantile

if TYPE_CHECKING:
    from deploy.targets.traffic import LoadResult

log = logging.getLogger(__name__)

Verdict = Literal["passed", "failed", "inconclusive"]


@dataclass
class Snapshot:
    """Cumulative counters of one slot at one scrape, prediction routes only."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    classes: dict[str, float] = field(default_factory=dict)
    client_errors: float = 0.0  # 4xx but 429
    rate_limited: float = 0.0  # 429: answered before the body is read, so never a client error as well


@dataclass(frozen=True)
class NoAnswer:
    """A slot whose /metrics gave no metrics page: refused, dead, timed out, non-200 or unreadable.

    ``no_data``: the metrics source had nothing, not the slot (a Prometheus that does not answer or holds no series
    of the slot): inconclusive for the canary too, never failed nor passed (argo-rollouts#1466, #180)."""

    reason: str
    no_data: bool = False


def _is_prediction_route(route: str) -> bool:
    return "predict" in route or "infer" in route


def parse_metrics(text: str) -> Snapshot:
    """Pick the counters the analysis needs out of a /metrics page (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    snap = Snapshot()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "mlrelease_requests_total" and _is_prediction_route(labels.get("route", "")):
                count_requests(snap, labels.get("status", ""), sample.value)
            elif sample.name == "mlrelease_request_duration_seconds_bucket" and _is_prediction_route(
                labels.get("route", "")
            ):
                le = float(labels["le"])
                snap.buckets[le] = snap.buckets.get(le, 0.0) + sample.value
            elif sample.name == "mlrelease_predictions_total":
                cls = labels.get("class", "?")
                snap.classes[cls] = snap.classes.get(cls, 0.0) + sample.value
    return snap


def count_requests(snap: Snapshot, status: str, n: float) -> None:
    """Add ``n`` prediction requests answered with ``status`` to ``snap`` (5xx, 429 and other 4xx apart)."""
    snap.requests += n
    if status.startswith("5"):
        snap.errors += n
    elif status == "429":
        snap.rate_limited += n
    elif status.startswith("4"):
        snap.client_errors += n


def delta(after: Snapshot, before: Snapshot) -> Snapshot:
    """What happened between two scrapes (a restarted server resets counters: then ``after`` is the delta).

    A restart shows as fewer requests, or as a class count that went down or vanished (the class series of a
    fresh server appear only once it predicts them), even when the restarted server has served more since."""
    if after.requests < before.requests or any(after.classes.get(c, 0.0) < n for c, n in before.classes.items()):
        return after
    return Snapshot(
        requests=after.requests - before.requests,
        errors=after.errors - before.errors,
        buckets={le: n - before.buckets.get(le, 0.0) for le, n in after.buckets.items()},
        classes={c: n - before.classes.get(c, 0.0) for c, n in after.classes.items()},
        client_errors=after.client_errors - before.client_errors,
        rate_limited=after.rate_limited - before.rate_limited,
    )


@dataclass
class Measurement:
    """One interval's comparison of canary with stable, with the values that decided it."""

    weight: float
    verdict: Verdict
    reasons: list[str]
    canary_requests: float
    stable_requests: float
    canary_error_rate: float | None
    stable_error_rate: float | None
    canary_p99_ms: float | None
    stable_p99_ms: float | None
    divergence: float | None
    canary_scrape_error: str | None = None  # why the canary's /metrics did not answer this interval
    canary_no_data: bool = False  # that was the metrics source's lack of data, not the canary's: inconclusive
    stable_scrape_error: str | None = None
    driver_requests: int | None = None  # the analysis' own load through the router; None when it drove none
    driver_failed: int | None = None  # no answer or 5xx among them (their 4xx are in driver_statuses)
    driver_error_rate: float | None = None
    driver_statuses: dict[str, int] = field(default_factory=dict)  # status code ("0" = no answer) -> count
    driver_rejected: int | None = None  # 4xx but 429 among them: valid rows, so never the analysis' evidence
    driver_judged: int | None = None  # driven requests that got an answer other than 429 (the base of that share)
    canary_client_error_rate: float | None = None  # 4xx but 429, share of the judged requests (429 aside)
    stable_client_error_rate: float | None = None
    canary_judged: float = 0.0  # the bases of those shares
    stable_judged: float = 0.0
    canary_classes: dict[str, float] = field(default_factory=dict)  # predicted-class counts this interval
    stable_classes: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _rate(snap: Snapshot) -> float | None:
    """5xx share of the requests the slot judged (a 429 is answered before the model is reached)."""
    judged = _judged(snap)
    return snap.errors / judged if judged > 0 else None


def _judged(snap: Snapshot) -> float:
    """Requests the slot judged: each slot rate-limits on its own (stable, with most of every client's traffic,
    more often), so 429s are left out of the 4xx count and of its base."""
    return snap.requests - snap.rate_limited


def _client_rate(snap: Snapshot) -> float | None:
    judged = _judged(snap)
    return snap.client_errors / judged if judged > 0 else None


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def measure(
    canary: Snapshot | NoAnswer,
    stable: Snapshot | NoAnswer,
    weight: float,
    params: CanaryParams,
    load: LoadResult | None = None,
) -> Measurement:
    """Judge one interval: failed when the canary did not answer, the driven load failed or a check is over;
    inconclusive without enough data, without a stable to compare with, or when the driven load was refused and
    no check blames the canary for it; passed otherwise."""
    m = _observe(canary, stable, weight, load)
    failed = _hard_failures(m, params)
    missing = _missing_data(m, params)
    if m.canary_scrape_error is None:
        failed += _canary_checks(m, params, missing)
    if not failed:
        missing += _rejected_load(m, params)
    m.verdict = "failed" if failed else "inconclusive" if missing else "passed"
    m.reasons = failed + missing
    return m


def _canary_checks(m: Measurement, params: CanaryParams, missing: list[str]) -> list[str]:
    """The checks the interval's data allows: all of them; without stable data, the ceilings (they need no
    comparison); with a canary short of requests, its share of the traffic (refusing most of it is short too)."""
    if not missing:
        return _failed_checks(m, params)
    if m.canary_judged >= params.min_requests:
        return _ceiling_failures(m, params)
    if m.stable_scrape_error is None and m.stable_judged >= params.min_requests:
        return _traffic_share_check(m, params)
    return []


def _observe(
    canary: Snapshot | NoAnswer, stable: Snapshot | NoAnswer, weight: float, load: LoadResult | None
) -> Measurement:
    """The interval's values (an unanswered slot counts as no data) with the scrape and load evidence."""
    c = canary if isinstance(canary, Snapshot) else Snapshot()
    s = stable if isinstance(stable, Snapshot) else Snapshot()
    m = Measurement(
        weight,
        "passed",
        [],
        c.requests,
        s.requests,
        _rate(c),
        _rate(s),
        _ms(quantile(0.99, c.buckets)),
        _ms(quantile(0.99, s.buckets)),
        js_divergence(c.classes, s.classes),
        canary_scrape_error=canary.reason if isinstance(canary, NoAnswer) else None,
        canary_no_data=isinstance(canary, NoAnswer) and canary.no_data,
        stable_scrape_error=stable.reason if isinstance(stable, NoAnswer) else None,
        canary_client_error_rate=_client_rate(c),
        stable_client_error_rate=_client_rate(s),
        canary_judged=_judged(c),
        stable_judged=_judged(s),
        canary_classes=dict(c.classes),
        stable_classes=dict(s.classes),
    )
    if load is not None:
        m.driver_requests, m.driver_failed, m.driver_error_rate = load.total, load.failed, load.error_rate
        m.driver_statuses = {str(code): n for code, n in sorted(load.statuses.items())}
        m.driver_rejected = load.rejected
        m.driver_judged = load.judged
    return m


def _hard_failures(m: Measurement, params: CanaryParams) -> list[str]:
    """Failures that need no comparison with stable: a canary that did not answer, load that failed."""
    reasons: list[str] = []
    if m.canary_scrape_error is not None and not m.canary_no_data:
        reasons.append(f"canary did not answer /metrics: {m.canary_scrape_error}")
    if m.driver_error_rate is not None and m.driver_error_rate > params.max_error_rate:
        reasons.append(
            f"error rate through the router {m.driver_error_rate:.2%} > {params.max_error_rate:.2%} "
            f"({m.driver_failed} of {m.driver_requests} driven requests failed; statuses {m.driver_statuses})"
        )
    return reasons


def _missing_data(m: Measurement, params: CanaryParams) -> list[str]:
    """Why the slots' metrics cannot be compared this interval (inconclusive, never a pass)."""
    if m.canary_no_data:
        return [f"no metrics of the canary: {m.canary_scrape_error} (no data: inconclusive, never a pass)"]
    if m.stable_scrape_error is not None:
        return [f"stable did not answer /metrics: {m.stable_scrape_error} (nothing to compare with: inconclusive)"]
    if m.canary_scrape_error is None and min(m.canary_judged, m.stable_judged) < params.min_requests:
        return [
            f"too few requests (canary {m.canary_judged:g}, stable {m.stable_judged:g}, "
            f"need {params.min_requests} each; 429s not counted)"
        ]
    return []


def _rejected_load(m: Measurement, params: CanaryParams) -> list[str]:
    """The analysis' own valid requests refused, and the canary refusing no more of them than stable (a 401 when
    the servers want an API key the analysis does not send): the slots' metrics then count refusals, not
    predictions. 429s and requests without an answer are left out of the base."""
    if not m.driver_judged or not m.driver_rejected:
        return []
    if m.driver_rejected / m.driver_judged <= params.max_error_rate:
        return []
    return [
        f"{m.driver_rejected} of the analysis' {m.driver_judged} answered requests were rejected (statuses "
        f"{m.driver_statuses}) and the canary rejects no more of them than stable: no evidence either way. Check "
        "the API key the analysis sends (MLRELEASE_API_KEY) against the slots' and the stable version's input "
        "contract"
    ]


def _failed_checks(m: Measurement, params: CanaryParams) -> list[str]:
    """Checks of the canary's metrics against absolute ceilings and against stable."""
    reasons = _error_rate_check(m, params) + _client_error_check(m, params) + _traffic_share_check(m, params)
    if m.canary_p99_ms is not None:
        relative = (m.stable_p99_ms or 0.0) * params.max_p99_ratio + params.p99_slack_ms
        limit = min(params.max_p99_latency_ms, relative) if m.stable_p99_ms is not None else params.max_p99_latency_ms
        if m.canary_p99_ms > limit:
            reasons.append(
                f"p99 latency {m.canary_p99_ms:.1f} ms > {limit:.1f} ms (stable {m.stable_p99_ms or 0:.1f} ms)"
            )
    return reasons + _divergence_check(m, params)


def _divergence_check(m: Measurement, params: CanaryParams) -> list[str]:
    """Predicted-class shares further apart than ``max_divergence``, and by more than sampling noise.

    Each slot sees a random share of the requests, so with tens of requests an interval two identical models can
    show a divergence over the limit by chance (about 1% of intervals at 50 requests a slot): a chi-square test of
    the two slots' class counts must also reject at ``divergence_p_value``, as the client-error check does with
    its z-score.
    """
    if m.divergence is None or m.divergence <= params.max_divergence:
        return []
    p_value = homogeneity_p_value(m.canary_classes, m.stable_classes)
    if p_value is None or p_value >= params.divergence_p_value:
        return []
    return [
        f"prediction divergence {m.divergence:.3f} > {params.max_divergence} (chi-square p = {p_value:.1e} < "
        f"{params.divergence_p_value}: predicted-class shares differ beyond chance; class counts canary "
        f"{_counts(m.canary_classes)}, stable {_counts(m.stable_classes)})"
    ]


def _poolable(m: Measurement) -> bool:
    """A passed interval in which both slots predicted (a failed one has had its say: pooling it again would
    count its divergence twice) and no class count is negative."""
    counts = (m.canary_classes, m.stable_classes)
    return m.verdict == "passed" and all(sum(c.values()) > 0 and min(c.values()) >= 0 for c in counts)


def pooled_divergence(measurements: list[Measurement], params: CanaryParams) -> list[str]:
    """The divergence test over the passed intervals so far, stratified by interval: the canary's pooled class
    counts against what stable's shares of each interval predict for as many canary predictions, and the sum of
    the intervals' chi-square statistics (independent intervals; one where both slots predicted a single class
    adds its counts and no degree of freedom). So a traffic mix that changes between steps, which each slot
    samples in a different proportion, is no divergence; a canary that differs in every interval is."""
    observed: dict[str, float] = {}
    expected: dict[str, float] = {}
    tables: list[ClassTable] = []
    used = 0
    for m in filter(_poolable, measurements):
        table = class_table(m.canary_classes, m.stable_classes)
        tables += [table] if table is not None else []
        used += 1
        canary_total, stable_total = sum(m.canary_classes.values()), sum(m.stable_classes.values())
        for label, n in m.canary_classes.items():
            observed[label] = observed.get(label, 0.0) + n
        for label, n in m.stable_classes.items():
            expected[label] = expected.get(label, 0.0) + canary_total * n / stable_total
    divergence = js_divergence(observed, expected) if used >= 2 and tables else None
    if divergence is None or divergence <= params.max_divergence:
        return []
    p_value = combined_p_value(tables)
    if p_value >= params.divergence_p_value:
        return []
    shown = {k: round(v, 1) for k, v in expected.items()}
    return [
        f"prediction divergence over {used} intervals so far {divergence:.3f} > {params.max_divergence} "
        f"(chi-square p = {p_value:.1e} < {params.divergence_p_value}: predicted-class shares differ beyond "
        f"chance; class counts canary {_counts(observed)}, as stable's shares would have them {_counts(shown)})"
    ]


def _counts(classes: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(classes.items())) + "}"


def _error_rate_check(m: Measurement, params: CanaryParams) -> list[str]:
    """Canary 5xx share over the absolute ceiling (whatever stable does) or over stable's plus the allowed increase."""
    ceiling = _error_ceiling(m, params)
    if ceiling:
        return ceiling
    c_rate, s_rate = m.canary_error_rate or 0.0, m.stable_error_rate or 0.0
    if c_rate > s_rate + params.max_error_rate_increase:
        return [
            f"error rate {c_rate:.2%} > stable {s_rate:.2%} + allowed increase {params.max_error_rate_increase:.2%}"
        ]
    return []


def _error_ceiling(m: Measurement, params: CanaryParams) -> list[str]:
    """The canary's 5xx share over ``max_error_rate``, whatever stable does."""
    c_rate = m.canary_error_rate or 0.0
    if c_rate <= params.max_error_rate:
        return []
    return [f"error rate {c_rate:.2%} > ceiling {params.max_error_rate:.2%} (stable {_stable_rate(m)})"]


def _stable_rate(m: Measurement) -> str:
    if m.stable_scrape_error is not None or m.stable_error_rate is None:
        return "no data"
    return f"{m.stable_error_rate:.2%}"


def _ceiling_failures(m: Measurement, params: CanaryParams) -> list[str]:
    """With no stable data to compare with, the checks that need none: the error and p99 ceilings."""
    reasons = _error_ceiling(m, params)
    if m.canary_p99_ms is not None and m.canary_p99_ms > params.max_p99_latency_ms:
        reasons.append(f"p99 latency {m.canary_p99_ms:.1f} ms > ceiling {params.max_p99_latency_ms:.1f} ms")
    return reasons


def _traffic_share_check(m: Measurement, params: CanaryParams) -> list[str]:
    """The canary answered well under its weight's share of the predictions, by more than sampling noise.

    nginx splits requests at random by weight, but sends a request the canary refused or timed out on to stable,
    its backup: those failures reach no slot's error count, so a canary that refuses part of its connections looks
    healthy by its own metrics. Its share of the requests is the evidence (a binomial test against the weight).
    """
    total, expected = m.canary_requests + m.stable_requests, m.weight / 100.0
    if total <= 0 or not 0.0 < expected < 1.0:
        return []
    share = m.canary_requests / total
    if share >= expected * params.min_traffic_share:
        return []
    z = (expected - share) / math.sqrt(expected * (1.0 - expected) / total)
    if z <= params.traffic_share_z:
        return []
    return [
        f"the canary answered {share:.1%} of the {total:g} predictions at weight {m.weight:g}% (under "
        f"{params.min_traffic_share:g} of its share, {z:.1f} standard errors): nginx sent the rest to stable after "
        "the canary refused or timed out on them. Check the canary's log and the router's error.log"
    ]


def _client_error_check(m: Measurement, params: CanaryParams) -> list[str]:
    """Canary 4xx share (429 aside) over stable's plus the allowed increase, by more than sampling noise.

    Clients' own mistakes can be a real share of the traffic, and at a 5% weight the canary sees few requests: the
    difference must also be over ``client_error_z`` standard errors of a two-proportion test, so chance does not
    roll back.
    """
    c_rate, s_rate = m.canary_client_error_rate or 0.0, m.stable_client_error_rate or 0.0
    if c_rate <= s_rate + params.max_client_error_rate_increase:
        return []
    c_n, s_n = m.canary_judged, m.stable_judged  # the bases of the shares, 429s left out
    if c_n <= 0 or s_n <= 0:
        return []
    pooled = (c_rate * c_n + s_rate * s_n) / (c_n + s_n)
    noise = math.sqrt(pooled * (1 - pooled) * (1 / c_n + 1 / s_n))
    z = (c_rate - s_rate) / noise if noise > 0 else 0.0
    if z <= params.client_error_z:
        return []
    return [
        f"client errors (4xx) {c_rate:.2%} > stable {s_rate:.2%} + allowed increase "
        f"{params.max_client_error_rate_increase:.2%}, {z:.1f} standard errors: the canary rejects requests stable "
        "accepts (a changed input contract?)"
    ]


@dataclass
class Analysis:
    """Running tally of measurements against the failure and inconclusive limits."""

    params: CanaryParams
    measurements: list[Measurement] = field(default_factory=list)

    def add(self, m: Measurement) -> None:
        """Count ``m``. A passing interval still fails when the class shares of all intervals so far differ
        beyond chance (``pooled_divergence``): at a small weight one interval holds too few predictions for the
        test to reject a canary that predicts differently, while the intervals together do."""
        self.measurements.append(m)
        if m.verdict != "passed":
            return
        reasons = pooled_divergence(self.measurements, self.params)
        if reasons:
            m.verdict, m.reasons = "failed", reasons

    @property
    def failures(self) -> int:
        return sum(1 for m in self.measurements if m.verdict == "failed")

    @property
    def inconclusives(self) -> int:
        return sum(1 for m in self.measurements if m.verdict == "inconclusive")

    def aborted(self) -> str | None:
        """Why the analysis must stop and roll back, or None while within the limits."""
        if self.failures > self.params.failure_limit:
            last = next(m for m in reversed(self.measurements) if m.verdict == "failed")
            why = "; ".join(last.reasons)
            return f"{self.failures} failed measurement(s) > failure_limit {self.params.failure_limit}: {why}"
        if self.inconclusives > self.params.inconclusive_limit:
            last = next(m for m in reversed(self.measurements) if m.verdict == "inconclusive")
            return (
                f"{self.inconclusives} inconclusive measurement(s) > inconclusive_limit "
                f"{self.params.inconclusive_limit} (no data is never a pass): {'; '.join(last.reasons)}"
            )
        return None

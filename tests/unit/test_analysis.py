"""Canary analysis: Prometheus parsing, quantiles, divergence, verdicts and Argo-style limits."""

from __future__ import annotations

import http.server
import json
import socket
import tempfile
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError

from deploy.targets.local import LocalTarget
from deploy.targets.traffic import LoadDriver, LoadResult
from mlrelease.core.params import CanaryParams, parse_duration
from mlrelease.core.settings import Settings
from release.analysis import Analysis, NoAnswer, Snapshot, delta, measure, parse_metrics
from release.canary import interval_delta
from release.canary import scrape as scrape_slot
from release.stats import class_table, homogeneity_p_value, js_divergence, quantile

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)


def server_metrics(
    ok: int, errors: int, seconds: float, classes: dict[str, int], client: dict[str, int] | None = None
) -> str:
    """A /metrics page with the serving contract's metric names, produced by prometheus_client itself."""
    reg = CollectorRegistry()
    requests = Counter("mlrelease_requests", "r", ["route", "status"], registry=reg)
    duration = Histogram("mlrelease_request_duration_seconds", "d", ["route"], buckets=BUCKETS, registry=reg)
    preds = Counter("mlrelease_predictions", "p", ["model_version", "class"], registry=reg)
    route = "/v1/models/{name}:predict"
    requests.labels(route, "200").inc(ok)
    requests.labels(route, "500").inc(errors)
    for status, n in (client or {}).items():
        requests.labels(route, status).inc(n)
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


def test_errors_fail_against_stable() -> None:
    failed = measure(snap(100, errors=10), snap(300), 25, params())
    assert failed.verdict == "failed" and "error rate" in failed.reasons[0]


def test_absolute_error_ceiling_applies_even_when_stable_errors_as_much() -> None:
    both_bad = measure(
        parse_metrics(server_metrics(70, 30, 0.003, {"a": 35, "b": 35})),
        parse_metrics(server_metrics(210, 90, 0.003, {"a": 105, "b": 105})),
        25,
        params(),
    )
    assert (both_bad.canary_error_rate, both_bad.stable_error_rate) == (pytest.approx(0.3), pytest.approx(0.3))
    assert both_bad.verdict == "failed"
    assert both_bad.reasons == ["error rate 30.00% > ceiling 1.00% (stable 30.00%)"]
    at_ceiling = measure(snap(1000, errors=10), snap(1000, errors=10), 25, params())
    assert at_ceiling.verdict == "passed", at_ceiling.reasons  # 1% is not above a 1% ceiling


def test_error_rate_below_the_ceiling_is_still_compared_with_stable() -> None:
    worse = measure(snap(1000, errors=8), snap(1000, errors=1), 25, params())
    assert worse.verdict == "failed" and "allowed increase 0.50%" in worse.reasons[0]
    close = measure(snap(1000, errors=5), snap(1000, errors=2), 25, params())
    assert close.verdict == "passed", close.reasons


def test_slow_canary_fails_relative_to_stable() -> None:
    m = measure(snap(100, seconds=0.1), snap(300, seconds=0.003), 25, params())
    assert m.verdict == "failed" and "p99" in m.reasons[0]
    assert measure(snap(100, seconds=0.1), snap(300, seconds=0.1), 25, params()).verdict == "passed"


def test_divergent_predictions_fail() -> None:
    m = measure(snap(100, classes={"a": 100}), snap(300, classes={"a": 150, "b": 150}), 25, params())
    assert m.verdict == "failed" and "divergence" in m.reasons[0]
    assert "chi-square p = " in m.reasons[0] and "canary {a: 100}, stable {a: 150, b: 150}" in m.reasons[0]


def test_divergence_within_sampling_noise_passes() -> None:
    # two identical models, 50 requests a slot, shares 0.72 against 0.46 by chance (JS 0.051, p 0.008): a CI run
    # rolled back a canary of an unchanged model on such an interval (JS 0.058)
    canary, stable = {"0": 36, "1": 14}, {"0": 23, "1": 27}
    assert js_divergence(canary, stable) > 0.05
    p = homogeneity_p_value(canary, stable)
    assert p is not None and 0.001 < p < 0.02
    m = measure(snap(50, classes=canary), snap(50, classes=stable), 50, params())
    assert m.verdict == "passed", m.reasons
    assert measure(snap(50, classes=canary), snap(50, classes=stable), 50, params(divergence_p_value=0.05)).verdict == (
        "failed"
    )
    # the same shares over ten times the requests are no accident
    many = measure(snap(500, classes={"0": 360, "1": 140}), snap(500, classes={"0": 230, "1": 270}), 50, params())
    assert many.verdict == "failed" and "divergence" in many.reasons[0]


def test_a_divergence_too_few_predictions_show_in_one_interval_fails_over_the_intervals_so_far() -> None:
    # at a 5% weight: 40 canary predictions an interval, 85% "a" against stable's 60% (JS 0.058, p 0.0026 alone)
    canary, stable = {"a": 34, "b": 6}, {"a": 120, "b": 80}
    analysis = Analysis(params(failure_limit=0))
    analysis.add(measure(snap(40, classes=canary), snap(200, classes=stable), 5, analysis.params))
    assert analysis.measurements[0].verdict == "passed", analysis.measurements[0].reasons
    second = measure(snap(40, classes=canary), snap(200, classes=stable), 5, analysis.params)
    assert second.verdict == "passed"  # on its own
    analysis.add(second)
    assert second.verdict == "failed"
    assert second.reasons[0].startswith("prediction divergence over 2 intervals so far 0.058 > 0.05")
    assert "p = 1.2e-04" in second.reasons[0]  # two chi-squares of 9.06 on one degree of freedom each
    assert "canary {a: 68, b: 12}, as stable's shares would have them {a: 48, b: 32}" in second.reasons[0]
    assert "failure_limit 0" in (analysis.aborted() or "")
    # the same canary predicting like stable within chance keeps passing, however many intervals
    alike = Analysis(params())
    for _ in range(6):
        alike.add(measure(snap(40, classes={"a": 27, "b": 13}), snap(200, classes=stable), 5, alike.params))
    assert [m.verdict for m in alike.measurements] == ["passed"] * 6


def test_a_traffic_mix_that_changes_between_steps_is_no_divergence_of_a_canary_that_predicts_alike() -> None:
    # step 5%: 90% of the traffic is class a; step 50%: 40%; both slots predict alike within each interval.
    # Pooled naively, the canary (mostly from the second interval) would look far from stable (mostly the first)
    analysis = Analysis(params())
    analysis.add(
        measure(snap(50, classes={"a": 45, "b": 5}), snap(950, classes={"a": 855, "b": 95}), 5, analysis.params)
    )
    analysis.add(
        measure(snap(500, classes={"a": 200, "b": 300}), snap(500, classes={"a": 200, "b": 300}), 50, analysis.params)
    )
    assert [m.verdict for m in analysis.measurements] == ["passed", "passed"], analysis.measurements[1].reasons


def test_intervals_a_slot_had_no_data_in_or_a_counter_went_back_are_not_pooled() -> None:
    analysis = Analysis(params(failure_limit=5, inconclusive_limit=5))
    analysis.add(measure(NoAnswer("connection refused"), snap(950, classes={"a": 900, "b": 50}), 5, analysis.params))
    analysis.add(
        measure(snap(100, classes={"a": 40, "b": 60}), snap(100, classes={"a": 40, "b": 60}), 5, analysis.params)
    )
    assert analysis.measurements[1].verdict == "passed", analysis.measurements[1].reasons
    restarted = measure(
        snap(100, classes={"a": -60, "b": 160}), snap(100, classes={"a": 90, "b": 10}), 5, analysis.params
    )
    restarted.verdict, restarted.reasons = "passed", []  # as if its own checks had passed: still not pooled
    analysis.add(restarted)
    analysis.add(
        measure(snap(100, classes={"a": 40, "b": 60}), snap(100, classes={"a": 40, "b": 60}), 5, analysis.params)
    )
    assert analysis.measurements[-1].verdict == "passed", analysis.measurements[-1].reasons


def test_a_failed_interval_is_not_pooled_again_and_agreeing_single_class_intervals_count() -> None:
    analysis = Analysis(params(failure_limit=1))
    analysis.add(
        measure(snap(60, classes={"a": 55, "b": 5}), snap(1000, classes={"a": 500, "b": 500}), 5, analysis.params)
    )
    assert analysis.measurements[0].verdict == "failed"
    analysis.add(
        measure(snap(30, classes={"a": 15, "b": 15}), snap(600, classes={"a": 300, "b": 300}), 5, analysis.params)
    )
    assert analysis.measurements[1].verdict == "passed", analysis.measurements[1].reasons  # its own shares agree
    assert analysis.aborted() is None
    # both slots predicting only "a" is agreement: it dilutes a later, small divergence instead of being left out
    agreeing = Analysis(params())
    agreeing.add(measure(snap(500, classes={"a": 500}), snap(500, classes={"a": 500}), 5, agreeing.params))
    for _ in range(2):
        agreeing.add(
            measure(snap(40, classes={"a": 34, "b": 6}), snap(200, classes={"a": 120, "b": 80}), 5, agreeing.params)
        )
    assert [m.verdict for m in agreeing.measurements] == ["passed"] * 3, agreeing.measurements[-1].reasons


def test_a_class_series_that_vanished_is_a_restart() -> None:
    before = Snapshot(100, classes={"a": 60, "b": 40})
    after = Snapshot(150, classes={"a": 150})  # restarted, then served 150 requests, all predicted "a"
    assert delta(after, before) == after


def test_a_rare_class_is_tested_exactly_so_one_prediction_of_it_is_no_divergence() -> None:
    # 20 canary predictions at a 5% weight; stable never predicted "c": the chi-square distribution puts this
    # at p 2e-5 (one "c" against an expected 0.05), which failed about 1% of intervals of two identical models
    canary, stable = {"a": 9, "b": 10, "c": 1}, {"a": 274, "b": 104, "d": 2}
    table = class_table(canary, stable)
    assert table is not None and table.sparse
    p = homogeneity_p_value(canary, stable)
    assert p is not None and 0.001 < p < 0.02 and p == homogeneity_p_value(canary, stable)  # seeded: repeats
    assert measure(snap(20, classes=canary), snap(380, classes=stable), 5, params()).verdict == "passed"
    # a canary that predicts the rare class six times in twenty is no accident
    often = {"a": 10, "b": 4, "c": 6}
    assert (homogeneity_p_value(often, stable) or 1) < 0.001
    assert measure(snap(20, classes=often), snap(380, classes=stable), 5, params()).verdict == "failed"


def test_homogeneity_p_value_matches_a_known_chi_square() -> None:
    # 2x2 table [[10, 20], [20, 10]]: chi-square 6.667 on one degree of freedom, p = 0.00982
    assert homogeneity_p_value({"a": 10, "b": 20}, {"a": 20, "b": 10}) == pytest.approx(0.00982, abs=1e-5)
    assert homogeneity_p_value({"a": 5, "b": 5}, {"a": 50, "b": 50}) == pytest.approx(1.0)
    assert homogeneity_p_value({"a": 10}, {"a": 30}) is None  # one class between them: nothing to test
    assert homogeneity_p_value({}, {"a": 1, "b": 2}) is None
    reset = homogeneity_p_value({"a": 10, "b": 5}, {"a": -30, "b": 10})  # a counter reset reads as 0, not -30
    assert reset == pytest.approx(homogeneity_p_value({"a": 10, "b": 5}, {"b": 10}))
    assert reset is not None and reset < 0.01
    three = homogeneity_p_value({"a": 30, "b": 10, "c": 0}, {"a": 10, "b": 10, "c": 20})
    assert three is not None and three < 1e-5  # two degrees of freedom, a class only one slot predicts


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


class _Slot(http.server.BaseHTTPRequestHandler):
    """A stand-in serving slot: /metrics gives a fixed page and status; every n-th prediction answers 503."""

    def do_GET(self) -> None:
        status, text = self.server.metrics  # type: ignore[attr-defined]
        self._answer(status, text.encode(), "text/plain")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.posts += 1  # type: ignore[attr-defined]
            self.server.auth.add(self.headers.get("Authorization"))  # type: ignore[attr-defined]
            n = self.server.posts  # type: ignore[attr-defined]
        every = self.server.fail_every  # type: ignore[attr-defined]
        status = self.server.fail_status if every and n % every == 0 else 200  # type: ignore[attr-defined]
        body = {"predictions": [{"class": "a"}], "model_version": "7"} if status == 200 else {"error": "boom"}
        self._answer(status, json.dumps(body).encode(), "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def slot_server(
    status: int = 200, text: str = "", fail_every: int = 0, fail_status: int = 503
) -> Iterator[http.server.ThreadingHTTPServer]:
    """A real HTTP server on 127.0.0.1 (ephemeral port), shut down on exit."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slot)
    server.metrics, server.fail_every = (status, text), fail_every  # type: ignore[attr-defined]
    server.fail_status = fail_status  # type: ignore[attr-defined]
    server.lock, server.posts, server.auth = threading.Lock(), 0, set()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url_of(server: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def drive(
    router: http.server.ThreadingHTTPServer, posts: int = 40, headers: dict[str, str] | None = None
) -> tuple[LoadDriver, LoadResult]:
    """Send predictions through a real LoadDriver until the server saw ``posts`` of them (or 10 s); its result."""
    driver = LoadDriver(url_of(router), "m", [[0.0, 1.0]], rps=200, concurrency=2, max_seconds=5, headers=headers)
    driver.start()
    deadline = time.monotonic() + 10
    while router.posts < posts and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    return driver, driver.stop()


class UrlTarget(LocalTarget):
    """The local target's metrics read, for one production slot at ``url`` (no state, no process)."""

    def __init__(self, url: str) -> None:
        super().__init__(Path(tempfile.gettempdir()) / "mlrelease-no-state")
        self.url = url

    def replica_urls(self, environment: str, slot: str) -> list[str]:
        return [self.url]


def scrape(url: str) -> Snapshot | NoAnswer:
    """What the canary transition reads from a slot served at ``url``: through the target interface."""
    return scrape_slot(UrlTarget(url), "canary")


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_scrape_says_why_a_slot_did_not_answer() -> None:
    page = server_metrics(90, 10, 0.003, {"a": 90})
    with slot_server(200, page) as good, slot_server(500, "oops") as broken, slot_server(200, "<html>") as wrong:
        assert scrape(url_of(good)) == parse_metrics(page)
        assert scrape(url_of(broken)) == NoAnswer(f"HTTP 500 from {url_of(broken)}/metrics")
        unreadable = scrape(url_of(wrong))
        assert isinstance(unreadable, NoAnswer) and "unreadable metrics page" in unreadable.reason
    refused = scrape(closed_port_url())
    assert isinstance(refused, NoAnswer) and "no connection" in refused.reason


def test_canary_that_stops_answering_fails_and_rolls_back() -> None:
    with slot_server(200, server_metrics(10, 0, 0.003, {"a": 10})) as canary:
        url = url_of(canary)
        before = scrape(url)
    after = scrape(url)  # the canary's process is gone: connection refused
    m = measure(interval_delta(before, after), snap(300), 25, params())
    assert m.verdict == "failed"
    assert m.reasons[0].startswith(f"canary did not answer /metrics: no connection to {url}")
    assert m.reasons[0].endswith("at the end of the interval") and m.canary_scrape_error is not None
    analysis = Analysis(params(failure_limit=0, inconclusive_limit=5))
    analysis.add(m)
    assert "canary did not answer /metrics" in (analysis.aborted() or "")


def test_canary_answering_non_200_fails_even_without_stable() -> None:
    with slot_server(503, "draining") as canary:
        m = measure(interval_delta(scrape(url_of(canary)), snap(0)), NoAnswer("HTTP 500"), 25, params())
    expected = f"canary did not answer /metrics: HTTP 503 from {url_of(canary)}/metrics at the start of the interval"
    assert m.verdict == "failed" and m.reasons[0] == expected
    assert m.reasons[1].startswith("stable did not answer /metrics: HTTP 500")


def test_stable_that_does_not_answer_is_inconclusive_and_says_so() -> None:
    before = scrape(closed_port_url())
    m = measure(snap(100), interval_delta(before, snap(300)), 25, params())
    assert m.verdict == "inconclusive"
    assert m.reasons == [
        f"stable did not answer /metrics: {before.reason} at the start of the interval "  # type: ignore[union-attr]
        "(nothing to compare with: inconclusive)"
    ]
    analysis = Analysis(params(inconclusive_limit=1))
    analysis.add(m)
    assert analysis.aborted() is None and analysis.failures == 0  # tolerated like any missing data
    analysis.add(m)
    aborted = analysis.aborted() or ""
    assert "no data is never a pass" in aborted
    assert "stable did not answer /metrics" in aborted  # the abort says why the data was missing


def test_canary_over_a_ceiling_fails_even_when_stable_does_not_answer() -> None:
    gone = NoAnswer("no connection to http://127.0.0.1:9 (refused)")
    failing = measure(snap(100, errors=30), gone, 25, params())
    assert failing.verdict == "failed"
    assert failing.reasons[0] == "error rate 30.00% > ceiling 1.00% (stable no data)"
    assert failing.reasons[1].startswith("stable did not answer /metrics")  # why the rest was not compared
    slow = measure(snap(100, seconds=1.0), gone, 25, params(max_p99_latency_ms=500))
    assert slow.verdict == "failed" and slow.reasons[0].startswith("p99 latency ")
    assert slow.reasons[0].endswith(" ms > ceiling 500.0 ms")
    assert measure(snap(100), gone, 25, params()).verdict == "inconclusive"  # within the ceilings: no evidence
    assert measure(snap(10, errors=10), gone, 25, params()).verdict == "inconclusive"  # too few to judge


def test_a_canary_that_answers_well_under_its_share_fails() -> None:
    """nginx retries at stable what the canary refused: only the canary's missing share shows it."""
    short = measure(snap(20), snap(380), 25, params())
    assert short.verdict == "failed"
    assert short.reasons == [
        "the canary answered 5.0% of the 400 predictions at weight 25% (under 0.5 of its share, 9.2 standard "
        "errors): nginx sent the rest to stable after the canary refused or timed out on them. Check the canary's "
        "log and the router's error.log"
    ]
    assert measure(snap(60), snap(340), 25, params()).verdict == "passed"  # 15%: over half of its 25%
    assert measure(snap(20), snap(600), 5, params()).verdict == "passed"  # 3.2% at 5%: over half of its share
    noise = measure(snap(5), snap(220), 5, params(min_requests=5))  # 2.2% at 5%, but of 225: 1.9 standard errors
    assert noise.verdict == "passed", noise.reasons
    assert measure(snap(20), snap(380), 25, params(min_traffic_share=0.1)).verdict == "passed"
    worst = measure(snap(5), snap(600), 25, params())  # refusing nearly all: short of min_requests too
    assert worst.verdict == "failed" and worst.reasons[0].startswith("the canary answered 0.8% of the 605")
    assert worst.reasons[1].startswith("too few requests"), worst.reasons
    assert measure(snap(0), snap(100), 5, params()).verdict == "inconclusive"  # 0 of 100 at 5%: could be chance


def test_429s_are_not_requests_judged() -> None:
    limited = parse_metrics(server_metrics(10, 0, 0.003, {"a": 5, "b": 5}, client={"429": 500}))
    m = measure(limited, snap(300), 25, params())
    assert m.verdict == "inconclusive"
    assert m.reasons == ["too few requests (canary 10, stable 300, need 20 each; 429s not counted)"]
    erring = parse_metrics(server_metrics(90, 10, 0.003, {"a": 45, "b": 45}, client={"429": 900}))
    assert measure(erring, snap(300), 25, params()).canary_error_rate == pytest.approx(0.1)  # not 1%


def test_driver_failures_are_evidence() -> None:
    load = LoadResult(statuses=Tally({200: 995, 503: 3, 0: 2}))
    m = measure(snap(100), snap(300), 25, params(), load)
    assert m.verdict == "passed", m.reasons  # 0.5% through the router is within max_error_rate 1%
    evidence = m.as_dict()
    assert evidence["driver_requests"] == 1000 and evidence["driver_failed"] == 5
    assert evidence["driver_error_rate"] == pytest.approx(0.005)
    assert evidence["driver_statuses"] == {"0": 2, "200": 995, "503": 3}
    assert measure(snap(100), snap(300), 25, params()).driver_requests is None  # no load driven


def test_driver_failures_above_max_error_rate_fail_the_check() -> None:
    load = LoadResult(statuses=Tally({200: 90, 502: 6, 0: 4}))
    m = measure(snap(100), snap(300), 25, params(), load)
    assert m.verdict == "failed"
    assert m.reasons == [
        "error rate through the router 10.00% > 1.00% (10 of 100 driven requests failed; "
        "statuses {'0': 4, '200': 90, '502': 6})"
    ]
    quiet = measure(snap(3), snap(4), 25, params(), load)  # too little slot data cannot excuse failing users
    assert quiet.verdict == "failed" and quiet.reasons[0].startswith("error rate through the router")
    assert "too few requests" in quiet.reasons[1]


def test_load_driver_counts_failures_it_saw_through_a_real_server() -> None:
    with slot_server(fail_every=4) as router:
        driver, seen = drive(router)
    assert seen is not driver.result  # a copy: threads cannot change it afterwards
    assert seen.total >= 40 and seen.statuses[503] == pytest.approx(seen.total / 4, abs=2)
    assert seen.error_rate == pytest.approx(seen.failed / seen.total)
    m = measure(snap(100), snap(300), 25, params(), seen)
    assert m.verdict == "failed" and m.driver_failed == seen.statuses[503]
    assert m.driver_statuses == {"200": seen.statuses[200], "503": seen.statuses[503]}


def test_load_driver_sends_the_api_key_of_the_settings() -> None:
    settings = Settings(api_key="k3y-for-the-analysis-test", home=Path("/nonexistent"))
    assert Settings(home=Path("/nonexistent")).prediction_headers() == {}  # no key: no header
    with slot_server() as router:
        _, seen = drive(router, posts=10, headers=settings.prediction_headers())
    assert seen.total >= 10 and router.auth == {"Bearer k3y-for-the-analysis-test"}  # type: ignore[attr-defined]


def test_client_errors_are_read_apart_from_429() -> None:
    page = server_metrics(80, 5, 0.003, {"a": 80}, client={"422": 10, "400": 3, "429": 50})
    snap_ = parse_metrics(page)
    assert (snap_.requests, snap_.errors, snap_.client_errors, snap_.rate_limited) == (148, 5, 13, 50)
    before = parse_metrics(server_metrics(10, 0, 0.003, {"a": 10}, client={"422": 1, "429": 5}))
    assert (delta(snap_, before).client_errors, delta(snap_, before).rate_limited) == (12, 45)


def test_stable_rate_limited_more_often_does_not_make_the_canary_look_worse() -> None:
    canary = parse_metrics(server_metrics(900, 0, 0.003, {"a": 450, "b": 450}, client={"422": 100}))
    stable = parse_metrics(server_metrics(9000, 0, 0.003, {"a": 4500, "b": 4500}, client={"422": 1000, "429": 10000}))
    m = measure(canary, stable, 5, params())
    assert m.verdict == "passed", m.reasons  # 10% of the judged requests on both: 429s are not in the base
    assert (m.canary_client_error_rate, m.stable_client_error_rate) == (pytest.approx(0.1), pytest.approx(0.1))


def test_canary_that_rejects_what_stable_accepts_fails() -> None:
    canary = parse_metrics(server_metrics(70, 0, 0.003, {"a": 35, "b": 35}, client={"422": 30}))
    stable = parse_metrics(server_metrics(297, 0, 0.003, {"a": 150, "b": 147}, client={"422": 3}))
    m = measure(canary, stable, 25, params())
    assert m.verdict == "failed"
    assert (m.canary_client_error_rate, m.stable_client_error_rate) == (pytest.approx(0.3), pytest.approx(0.01))
    assert m.reasons == [
        "client errors (4xx) 30.00% > stable 1.00% + allowed increase 1.00%, 9.1 standard errors: the canary "
        "rejects requests stable accepts (a changed input contract?)"
    ]


def test_a_few_more_client_errors_at_a_small_weight_are_sampling_noise() -> None:
    canary = parse_metrics(server_metrics(16, 0, 0.003, {"a": 8, "b": 8}, client={"422": 4}))  # 20% of 20
    stable = parse_metrics(server_metrics(342, 0, 0.003, {"a": 171, "b": 171}, client={"422": 38}))  # 10% of 380
    m = measure(canary, stable, 5, params())
    assert m.verdict == "passed", m.reasons  # 1.4 standard errors: chance, not a rejecting canary
    strict = measure(canary, stable, 5, params(client_error_z=1.0))
    assert strict.verdict == "failed" and "1.4 standard errors" in strict.reasons[0]


def test_clients_own_mistakes_and_rate_limits_do_not_fail_a_canary() -> None:
    same_junk = measure(
        parse_metrics(server_metrics(90, 0, 0.003, {"a": 45, "b": 45}, client={"422": 10})),
        parse_metrics(server_metrics(270, 0, 0.003, {"a": 135, "b": 135}, client={"422": 30})),
        25,
        params(),
    )
    assert same_junk.verdict == "passed", same_junk.reasons  # 10% on both: the clients', not the canary's
    limited = measure(
        parse_metrics(server_metrics(100, 0, 0.003, {"a": 50, "b": 50}, client={"429": 40})),
        parse_metrics(server_metrics(300, 0, 0.003, {"a": 150, "b": 150})),
        25,
        params(),
    )
    assert limited.verdict == "passed", limited.reasons
    assert limited.canary_client_error_rate == 0


def test_driven_requests_that_get_a_client_error_are_counted_apart() -> None:
    result = LoadResult(statuses=Tally({200: 90, 422: 6, 404: 1, 429: 3, 503: 2, 0: 1}))
    assert (result.failed, result.rejected, result.error_rate) == (3, 7, pytest.approx(3 / 103))
    with slot_server(fail_every=4, fail_status=422) as router:
        _, seen = drive(router)
    assert seen.statuses[422] == pytest.approx(seen.total / 4, abs=2)
    assert seen.rejected == seen.statuses[422] and seen.failed == 0
    m = measure(snap(100), snap(300), 25, params(), seen)  # the canary rejects no more than stable: not its fault,
    assert m.driver_statuses["422"] == seen.statuses[422] == m.driver_rejected  # but a quarter of the evidence
    assert m.verdict == "inconclusive" and "were rejected" in m.reasons[0], m.reasons  # is refusals: no pass
    few = LoadResult(statuses=Tally({200: 199, 422: 1}))  # within max_error_rate: still judged
    assert measure(snap(100), snap(300), 25, params(), few).verdict == "passed"


def test_load_rejected_by_both_slots_is_no_evidence() -> None:
    # servers that want an API key the analysis does not send: both slots answer its rows 401
    refused = LoadResult(Tally({401: 95, 200: 5}))
    canary = parse_metrics(server_metrics(5, 0, 0.003, {"a": 5}, client={"401": 45}))
    stable = parse_metrics(server_metrics(5, 0, 0.003, {"a": 5}, client={"401": 50}))
    m = measure(canary, stable, 50, params(), refused)
    assert m.verdict == "inconclusive" and m.driver_rejected == 95, m.reasons
    assert "95 of the analysis' 100 answered requests were rejected" in m.reasons[0], m.reasons
    assert "MLRELEASE_API_KEY" in m.reasons[0]
    # 429s and no-answers are not in the base: 2 rejected of 100 judged is over 1%, whatever the 429s
    limited = measure(snap(100), snap(300), 50, params(), LoadResult(Tally({200: 98, 422: 2, 429: 300, 0: 1})))
    assert limited.verdict == "inconclusive" and limited.driver_judged == 100, limited.reasons
    # rejected by the canary only (a changed input contract): that is the canary's failure, not missing data
    contract = LoadResult(Tally({422: 50, 200: 50}))
    wide = parse_metrics(server_metrics(0, 0, 0.003, {}, client={"422": 50}))
    ok_stable = parse_metrics(server_metrics(50, 0, 0.003, {"a": 50}))
    failed = measure(wide, ok_stable, 50, params(), contract)
    assert failed.verdict == "failed" and failed.reasons[0].startswith("client errors (4xx)"), failed.reasons

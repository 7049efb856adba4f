"""Where the canary analysis' counters come from (release.metrics_provider): the direct scrape, Prometheus answered
by a scripted /api/v1/query (httpx.MockTransport), readings turned into interval counts, no data as inconclusive;
and the two things that feed a team's Prometheus: the local target's discovery file and the release exporter."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from unittest.mock import Mock

import httpx
import pytest
from pydantic import ValidationError

from deploy.targets.base import DeploymentError, DeploymentTarget
from deploy.targets.local.discovery import sd_path, targets
from deploy.targets.local.state import DeployState, Replica, Slot, StateStore
from mlrelease.core.params import CanaryParams
from release.analysis import NoAnswer, Snapshot, measure, parse_metrics
from release.audit import AuditLog, AuditRecord
from release.journal import Operation
from release.metrics_provider import (
    PrometheusProvider,
    Reading,
    ScrapeProvider,
    between,
    make_provider,
)
from release.release_metrics import audit_metrics, operation_metrics, render
from release.states import Command

PAGE = """# TYPE mlrelease_requests_total counter
mlrelease_requests_total{route="/v1/models/{name}:predict",status="200"} 90
mlrelease_requests_total{route="/v1/models/{name}:predict",status="500"} 10
mlrelease_requests_total{route="/ready",status="200"} 7
# TYPE mlrelease_predictions_total counter
mlrelease_predictions_total{model_version="2",class="benign"} 90
"""


def snap(requests: float, errors: float = 0.0, classes: dict[str, float] | None = None) -> Snapshot:
    return Snapshot(requests=requests, errors=errors, classes=dict(classes or {}), buckets={0.01: requests})


# ----- readings into interval counts -----------------------------------------------------------------------------
def test_interval_counts_are_summed_replica_by_replica() -> None:
    before = Reading({"a:1": snap(100, 1, {"x": 99}), "b:2": snap(50, 0, {"x": 50}), "gone:3": snap(9)})
    after = Reading({"a:1": snap(130, 2, {"x": 128}), "b:2": snap(5, 0, {"x": 5}), "new:4": snap(7, 0, {"x": 7})})
    total = between(before, after)
    # a:1 grew by 30; b:2 restarted (its counter went down: all of it is new); new:4 counts from zero; gone:3 nothing
    assert isinstance(total, Snapshot)
    assert (total.requests, total.errors, total.classes, total.buckets) == (42, 1, {"x": 41}, {0.01: 42})


def test_no_answer_says_at_which_end_and_keeps_whose_fault_it_was() -> None:
    start = between(NoAnswer("refused", no_data=True), Reading())
    end = between(Reading(), NoAnswer("HTTP 503"))
    assert start == NoAnswer("refused at the start of the interval", no_data=True)
    assert end == NoAnswer("HTTP 503 at the end of the interval", no_data=False)


def test_the_scrape_provider_reads_each_slot_through_the_target_in_order() -> None:
    target = Mock(spec=DeploymentTarget)
    target.slot_metrics.side_effect = [PAGE, DeploymentError("no connection to http://127.0.0.1:9")]
    found = ScrapeProvider(target).read(("canary", "stable"))
    assert [c.args for c in target.slot_metrics.call_args_list] == [("production", "canary"), ("production", "stable")]
    assert found["canary"] == Reading({"*": parse_metrics(PAGE)})
    assert parse_metrics(PAGE).requests == 100 and parse_metrics(PAGE).errors == 10  # /ready is no prediction
    assert found["stable"] == NoAnswer("no connection to http://127.0.0.1:9")


# ----- a scripted Prometheus -------------------------------------------------------------------------------------
@dataclass
class FakePrometheus:
    """Answers the provider's queries from per-slot replicas: (up, time of the last scrape) and their counters."""

    now: float = 1000.0
    replicas: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)
    requests: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)  # slot -> (instance, status, n)
    classes: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)
    buckets: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)
    failure: httpx.Response | None = None
    seen: list[dict[str, str]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.seen.append(params)
        if self.failure is not None:
            return self.failure
        expr = params["query"]
        if expr == "time()":
            return self._ok({"resultType": "scalar", "result": [self.now, str(self.now)]})
        slot = re.search(r'slot="([^"]+)"', expr).group(1)  # type: ignore[union-attr]
        return self._ok({"resultType": "vector", "result": self._vector(expr, slot)})

    def _vector(self, expr: str, slot: str) -> list[dict[str, object]]:
        at = self.now
        if expr.startswith("timestamp(up"):
            rows = [({"instance": i}, t) for i, (_, t) in self.replicas.get(slot, {}).items()]
        elif expr.startswith("up{"):
            rows = [({"instance": i}, float(up)) for i, (up, _) in self.replicas.get(slot, {}).items()]
        else:
            key = "status" if "status)" in expr else "le" if "le)" in expr else "class"
            source = {"status": self.requests, "le": self.buckets, "class": self.classes}[key]
            rows = [({"instance": i, key: k}, n) for i, k, n in source.get(slot, [])]
        return [{"metric": labels, "value": [at, repr(value)]} for labels, value in rows]

    @staticmethod
    def _ok(data: dict[str, object]) -> httpx.Response:
        return httpx.Response(200, json={"status": "success", "data": data})


def provider(fake: FakePrometheus, **kw: object) -> PrometheusProvider:
    options: dict[str, object] = {"scrape_wait_s": 5.0, "poll_s": 0.0, "transport": httpx.MockTransport(fake)}
    return PrometheusProvider("http://prometheus:9090/", **{**options, **kw})  # type: ignore[arg-type]


def test_prometheus_counts_are_read_per_replica_at_one_instant() -> None:
    fake = FakePrometheus(replicas={"canary": {"r1": (1, 1001.0), "r2": (1, 1000.5)}})
    fake.requests["canary"] = [("r1", "200", 40), ("r1", "500", 2), ("r1", "429", 5), ("r2", "404", 3)]
    fake.buckets["canary"] = [("r1", "0.01", 40), ("r1", "+Inf", 47)]
    fake.classes["canary"] = [("r1", "benign", 30), ("r2", "malignant", 10)]
    found = provider(fake, labels={"job": "mlrelease-slots"}).read(("canary",))["canary"]
    assert isinstance(found, Reading)
    r1, r2 = found.sources["r1"], found.sources["r2"]
    assert (r1.requests, r1.errors, r1.rate_limited, r1.client_errors) == (47, 2, 5, 0)
    assert r1.buckets == {0.01: 40, float("inf"): 47} and r1.classes == {"benign": 30}
    assert (r2.requests, r2.client_errors, r2.classes) == (3, 3, {"malignant": 10})
    counted = [p for p in fake.seen if p["query"].startswith("sum by")]
    assert len(counted) == 3 and {p["time"] for p in counted} == {"1000.000"}  # Prometheus' clock, one instant
    assert all('job="mlrelease-slots"' in p["query"] for p in counted)


def test_a_reading_waits_until_every_replica_was_scraped_after_it_began() -> None:
    fake = FakePrometheus(replicas={"canary": {"r1": (1, 999.0)}, "stable": {"r2": (1, 998.0)}})
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # Prometheus scrapes r1, then r2, while the provider waits
        waits.append(seconds)
        fake.replicas["canary"]["r1"] = (1, 1000.2)
        if len(waits) == 2:
            fake.replicas["stable"]["r2"] = (1, 1000.7)

    found = provider(fake, sleep=sleep, poll_s=0.25).read(("canary", "stable"))
    assert waits == [0.25, 0.25] and all(isinstance(r, Reading) for r in found.values())


def test_a_reading_without_a_fresh_scrape_is_no_data() -> None:
    fake = FakePrometheus(replicas={"canary": {"r1": (1, 990.0)}})
    found = provider(fake, scrape_wait_s=0.0).read(("canary",))["canary"]
    assert isinstance(found, NoAnswer) and found.no_data
    assert "has not scraped production/canary (r1)" in found.reason and "prometheus_scrape_wait" in found.reason


def test_a_slot_without_series_is_no_data_and_one_prometheus_cannot_scrape_did_not_answer() -> None:
    fake = FakePrometheus(replicas={"stable": {"r2": (0, 1000.0), "r3": (0, 1000.0)}})
    found = provider(fake, scrape_wait_s=0.0).read(("canary", "stable"))
    missing, down = found["canary"], found["stable"]
    assert isinstance(missing, NoAnswer) and missing.no_data and "has no series up{" in missing.reason
    assert down == NoAnswer("Prometheus could not scrape any replica of production/stable (r2, r3)")


@pytest.mark.parametrize(
    ("response", "said"),
    [
        (httpx.Response(503, text="service unavailable"), "HTTP 503 to time(): service unavailable"),
        (httpx.Response(400, json={"status": "error", "error": "parse error"}), "HTTP 400 to time(): parse error"),
        (httpx.Response(200, json={"status": "success", "data": {"result": []}}), "unexpected answer to time()"),
    ],
)
def test_a_prometheus_that_answers_an_error_gives_no_data(response: httpx.Response, said: str) -> None:
    found = provider(FakePrometheus(failure=response)).read(("canary", "stable"))
    for answer in found.values():
        assert isinstance(answer, NoAnswer) and answer.no_data and said in answer.reason, answer
        assert "\n" not in answer.reason


def test_a_prometheus_that_does_not_answer_gives_no_data() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    found = PrometheusProvider("http://prometheus:9090", transport=httpx.MockTransport(refuse)).read(("canary",))
    assert found["canary"] == NoAnswer(
        "Prometheus at http://prometheus:9090 did not answer: ConnectError: connection refused", no_data=True
    )


def test_no_data_for_the_canary_is_inconclusive_never_failed_nor_passed() -> None:
    params = CanaryParams(min_requests=20)
    missing = NoAnswer("Prometheus at http://p did not answer at the start of the interval", no_data=True)
    m = measure(missing, snap(300), 25, params)
    assert m.verdict == "inconclusive" and m.canary_no_data
    assert m.reasons == [f"no metrics of the canary: {missing.reason} (no data: inconclusive, never a pass)"]
    refused = measure(NoAnswer("HTTP 503 from http://c/metrics"), snap(300), 25, params)
    assert refused.verdict == "failed"  # the canary itself did not answer: that is the canary's fault


def test_the_provider_is_chosen_by_the_canary_params() -> None:
    target = Mock(spec=DeploymentTarget)
    assert isinstance(make_provider(CanaryParams(), target), ScrapeProvider)
    params = CanaryParams(
        metrics_provider="prometheus",
        prometheus_url="http://prometheus:9090",
        prometheus_labels={"job": "slots"},
        prometheus_timeout="2s",
        prometheus_scrape_wait="1m",
    )
    chosen = make_provider(params, target)
    assert isinstance(chosen, PrometheusProvider)
    assert (chosen.url, chosen.labels, chosen.timeout_s, chosen.scrape_wait_s) == (
        "http://prometheus:9090",
        {"job": "slots"},
        2.0,
        60.0,
    )
    assert chosen.selector("canary") == {"job": "slots", "environment": "production", "slot": "canary"}


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"metrics_provider": "prometheus"}, "needs prometheus_url"),
        ({"metrics_provider": "prometheus", "prometheus_url": "prometheus:9090"}, "should match pattern"),
        ({"prometheus_labels": {"slot": "x"}}, "not label names"),
        ({"prometheus_labels": {"bad-name": "x"}}, "not label names"),
        ({"prometheus_scrape_wait": "0s"}, "prometheus_scrape_wait must be positive"),
        ({"metrics_provider": "graphite"}, "'scrape' or 'prometheus'"),
    ],
)
def test_prometheus_settings_are_validated(settings: dict[str, object], said: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(said)):
        CanaryParams.model_validate(settings)


# ----- what feeds a team's Prometheus ----------------------------------------------------------------------------
def test_the_local_target_publishes_its_replicas_whenever_it_saves_its_state(tmp_path: Path) -> None:
    def slot(version: str, *ports: int) -> Slot:
        return Slot(version=version, replicas=[Replica(port=p) for p in ports], model_name="m", bundle_dir="/b")

    state = DeployState()
    prod = state.env("production")
    prod.slots = {"stable": slot("3", 8001, 8002), "canary": slot("4", 8003)}
    prod.weights = {"stable": 75.0, "canary": 25.0}
    state.env("staging").slots["stable"] = slot("4", 8004)
    StateStore(tmp_path).save(state)
    written = json.loads(sd_path(tmp_path).read_text())
    assert written == targets(state.environments)
    assert [(t["targets"], t["labels"]) for t in written] == [
        (["127.0.0.1:8003"], {"environment": "production", "slot": "canary", "version": "4", "weight": "25"}),
        (["127.0.0.1:8001"], {"environment": "production", "slot": "stable", "version": "3", "weight": "75"}),
        (["127.0.0.1:8002"], {"environment": "production", "slot": "stable", "version": "3", "weight": "75"}),
        (["127.0.0.1:8004"], {"environment": "staging", "slot": "stable", "version": "4", "weight": "0"}),
    ]
    StateStore(tmp_path).save(DeployState())  # everything stopped: no targets left
    assert json.loads(sd_path(tmp_path).read_text()) == []
    assert sorted(p.name for p in sd_path(tmp_path).parent.iterdir()) == ["targets.json"]  # no temp file left


def test_release_metrics_count_audit_records_and_show_the_command_in_flight(tmp_path: Path) -> None:
    records = [
        {"environment": "production", "action": "rollback", "outcome": "done", "at": 100.0},
        {"environment": "production", "action": "rollback", "outcome": "done", "at": 250.0},
        {"environment": "production", "action": "traffic", "outcome": "done", "at": 300.0},
    ]
    total, last = audit_metrics(records)
    rollbacks = {"environment": "production", "action": "rollback", "outcome": "done"}
    assert [(s.name, s.value) for s in total.samples if s.labels == rollbacks] == [("mlrelease_audit_records_total", 2)]
    assert [s.value for s in last.samples if s.labels == rollbacks] == [250.0]
    op = Operation(command=Command.PROMOTE_CANARY, version="7", pid=os.getpid(), by="ci", started_at=200.0)
    families = {f.name: f.samples for f in operation_metrics(op, records)}
    labels = {"command": "promote canary", "version": "7"}
    assert {name: [(s.labels, s.value) for s in samples] for name, samples in families.items()} == {
        "mlrelease_operation_in_progress": [(labels, 1.0)],
        "mlrelease_operation_started_timestamp_seconds": [(labels, 200.0)],
        "mlrelease_operation_last_progress_timestamp_seconds": [(labels, 300.0)],  # its canary step at 300
        "mlrelease_operation_holder_alive": [(labels, 1.0)],
    }
    assert all(not f.samples for f in operation_metrics(None, records))  # nothing in flight: no series
    AuditLog(tmp_path).append(AuditRecord("rollback", "production", "ci", outcome="done"))
    page = render(tmp_path)
    assert 'mlrelease_audit_records_total{action="rollback",environment="production",outcome="done"} 1.0' in page
    assert "# TYPE mlrelease_operation_in_progress gauge" in page

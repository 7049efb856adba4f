"""Every canary of a version, interval by interval, from the audit log: the weight, each check's value against
its threshold (error rates, p99, divergence, traffic share, requests), and the analysis' verdict with its reasons.

The thresholds are recomputed from the canary's params as :mod:`release.analysis` applies them; the verdict is the
analysis' own (a check over its threshold by less than sampling noise, as its z-tests judge, does not fail)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from release.report.model import CanaryCheck, CanaryInterval, CanaryRun

ENDS = {"canary-passed": "passed", "canary-rollback": "rolled back"}


def when(record: dict[str, Any]) -> str:
    """A record's time as the audit log wrote it (UTC)."""
    return str(record.get("when") or "")


def is_start(record: dict[str, Any], version: str) -> bool:
    """Whether the record starts a canary of ``version`` (the alias ``canary`` set on it)."""
    return record.get("action") == "alias" and record.get("alias") == "canary" and record.get("to_version") == version


def end_of(record: dict[str, Any], version: str) -> str | None:
    """The outcome a record ends a canary of ``version`` with, or None when it ends none."""
    if record.get("to_version") != version:
        return None
    if record.get("action") in ENDS:
        return ENDS[str(record["action"])]
    if record.get("action") == "rollback" and record.get("alias") == "canary":
        return "stopped"  # a rollback stopped the canary (note_canary_stopped)
    return None


def canary_runs(records: list[dict[str, Any]], version: str, limits: dict[str, Any]) -> list[CanaryRun]:
    """The version's canaries, oldest first: each from its start record to the record that ended it."""
    runs: list[CanaryRun] = []
    start: dict[str, Any] | None = None
    for record in records:
        if is_start(record, version):
            start = record
            continue
        outcome = end_of(record, version)
        if outcome is None:
            continue
        opened = start or record
        measurements = (record.get("evidence") or {}).get("measurements") or []
        runs.append(
            CanaryRun(
                started=when(opened),
                ended=when(record),
                by=str(opened.get("by") or record.get("by") or ""),
                against=record.get("from_version") or opened.get("from_version"),
                outcome=outcome,
                reason=str(record.get("reason") or ""),
                forced=record.get("outcome") == "forced" or opened.get("outcome") == "forced",
                intervals=[interval(n, m, limits) for n, m in enumerate(measurements, start=1)],
            )
        )
        start = None
    return runs


def interval(number: int, m: dict[str, Any], limits: dict[str, Any]) -> CanaryInterval:
    """One measurement of the canary report or audit evidence, with each check against its threshold."""
    return CanaryInterval(
        number=number,
        weight=float(m.get("weight") or 0.0),
        verdict=str(m.get("verdict") or "?"),
        reasons=[str(r) for r in m.get("reasons") or []],
        checks=checks(m, limits),
        canary_p99_ms=m.get("canary_p99_ms"),
        stable_p99_ms=m.get("stable_p99_ms"),
        canary_error_rate=m.get("canary_error_rate"),
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def check(
    name: str, value: float | None, limit: float | None, fmt: Callable[[float | None], str], at_least: bool = False
) -> CanaryCheck:
    """A check as the report shows it: ``value <= limit`` (or ``>=`` for a minimum), marked when beyond it."""
    over = value is not None and limit is not None and (value < limit if at_least else value > limit)
    sign = ">=" if at_least else "<="
    return CanaryCheck(name=name, value=value, limit=limit, shown=f"{fmt(value)} {sign} {fmt(limit)}", over=over)


def checks(m: dict[str, Any], limits: dict[str, Any]) -> list[CanaryCheck]:
    """Each check of one interval with the threshold :mod:`release.analysis` applied to it."""
    lim = {**DEFAULT_LIMITS, **{k: v for k, v in limits.items() if v is not None}}
    stable_rate, stable_4xx = m.get("stable_error_rate") or 0.0, m.get("stable_client_error_rate") or 0.0
    out = [
        check(
            "errors (5xx)",
            m.get("canary_error_rate"),
            min(lim["max_error_rate"], stable_rate + lim["max_error_rate_increase"]),
            _pct,
        ),
        check(
            "client errors (4xx)",
            m.get("canary_client_error_rate"),
            stable_4xx + lim["max_client_error_rate_increase"],
            _pct,
        ),
        check("p99 latency", m.get("canary_p99_ms"), p99_limit(m.get("stable_p99_ms"), lim), _ms),
        check("divergence", m.get("divergence"), float(lim["max_divergence"]), _num),
        check(
            "traffic share", traffic_share(m), float(m.get("weight") or 0) / 100 * lim["min_traffic_share"], _pct, True
        ),
        check("requests (each slot)", judged(m), float(lim["min_requests"]), _num, True),
    ]
    if m.get("driver_requests") is not None:
        out.append(check("driven load errors", m.get("driver_error_rate"), float(lim["max_error_rate"]), _pct))
    return out


DEFAULT_LIMITS: dict[str, float] = {  # CanaryParams' defaults, for a record whose params are not known
    "max_error_rate": 0.01,
    "max_error_rate_increase": 0.005,
    "max_client_error_rate_increase": 0.01,
    "max_p99_latency_ms": 500.0,
    "max_p99_ratio": 2.0,
    "p99_slack_ms": 25.0,
    "max_divergence": 0.05,
    "min_traffic_share": 0.5,
    "min_requests": 20.0,
}


def p99_limit(stable_p99: float | None, lim: dict[str, Any]) -> float:
    """The canary's p99 limit: the absolute ceiling, and stable's p99 x ratio + slack when stable answered."""
    ceiling = float(lim["max_p99_latency_ms"])
    if stable_p99 is None:
        return ceiling
    return min(ceiling, float(stable_p99) * float(lim["max_p99_ratio"]) + float(lim["p99_slack_ms"]))


def traffic_share(m: dict[str, Any]) -> float | None:
    """The canary's share of the predictions both slots served in the interval."""
    total = float(m.get("canary_requests") or 0) + float(m.get("stable_requests") or 0)
    return float(m.get("canary_requests") or 0) / total if total > 0 else None


def judged(m: dict[str, Any]) -> float | None:
    """The fewer of the two slots' judged requests (429s aside): the base of every share."""
    canary, stable = m.get("canary_judged"), m.get("stable_judged")
    return None if canary is None or stable is None else min(float(canary), float(stable))

"""Run headless Locust against a server, read its statistics and check them against the SLOs in params.yaml.

Writes reports/loadtest.json (stats, SLOs, breaches) and Locust's HTML report; a breached SLO is named in the
result so the caller can exit non-zero with it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mlrelease.core.http import probe, wait_until
from mlrelease.core.net import safe_for_secrets
from mlrelease.core.params import HIGHER_IS_LAXER, LOWER_IS_LAXER

if TYPE_CHECKING:
    from mlrelease.core.progress import Progress

log = logging.getLogger(__name__)
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


class SLO(BaseModel):
    """Service-level objectives the load test must meet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p95_ms: float = Field(50.0, gt=0, json_schema_extra=HIGHER_IS_LAXER)
    p99_ms: float = Field(100.0, gt=0, json_schema_extra=HIGHER_IS_LAXER)
    max_error_rate: float = Field(0.001, ge=0, le=1, json_schema_extra=HIGHER_IS_LAXER)
    min_rps: float = Field(100.0, ge=0, json_schema_extra=LOWER_IS_LAXER)


class LoadtestParams(BaseModel):
    """The ``loadtest`` section of params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: int = Field(10, ge=1, le=1000)
    spawn_rate: float = Field(10.0, gt=0)
    duration_s: int = Field(10, ge=1, le=3600)
    user_rps: float = Field(0.0, ge=0, description="requests/s per user; 0 = closed loop, as fast as possible")
    batch_size: int = Field(1, ge=1)
    ready_timeout_s: float = Field(60.0, gt=0)
    slo: SLO = Field(default_factory=lambda: SLO.model_validate({}))


LOCUST_GRACE_S = 120  # start-up, spawn and the final report, beyond the test's own duration


def _tail(output: str | bytes | None, size: int = 1500) -> str:
    """The end of a child's captured output, for an error message."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
    return text[-size:] or "(no output)"


class LoadtestError(RuntimeError):
    """The load test could not run (server not ready, Locust failed); distinct from a breached SLO."""


def wait_ready(url: str, timeout: float, alive: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Poll GET /ready until it answers 200 (its JSON body is returned); fail fast when ``alive()`` says the
    server died or /ready says its model failed to load."""
    ready: dict[str, Any] = {}
    last = ["no answer"]

    def answered() -> bool:
        if alive is not None and not alive():
            raise LoadtestError(f"server at {url} exited before it became ready")
        status, text = probe(f"{url}/ready", timeout=2)
        try:
            body = json.loads(text) if status else None
        except ValueError:
            return False
        if not isinstance(body, dict):
            return False
        if status == 200:
            ready.update(body)
            return True
        last[0] = str(body.get("reason", body))
        if body.get("failed"):
            raise LoadtestError(f"server at {url} failed to load its model: {last[0]}")
        return False

    if not wait_until(answered, timeout, interval=0.2):
        raise LoadtestError(f"server at {url} not ready after {timeout:.0f} s ({last[0]})")
    return ready


def locust_command(url: str, params: LoadtestParams, csv_prefix: Path, html: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        url,
        "-u",
        str(params.users),
        "-r",
        str(params.spawn_rate),
        "-t",
        f"{params.duration_s}s",
        "--csv",
        str(csv_prefix),
        "--csv-full-history",  # percentiles of the last seconds, every second: the report's latency over time
        "--html",
        str(html),
        "--only-summary",
        "--stop-timeout",
        "5",
        "--loglevel",
        "WARNING",
    ]


def _number(value: str | None) -> float:
    """Locust writes N/A for percentiles of an empty run."""
    try:
        return float(value or "nan")
    except ValueError:
        return float("nan")


def aggregated_stats(stats_csv: Path) -> dict[str, float]:
    """The 'Aggregated' row of Locust's <prefix>_stats.csv as numbers (latencies in ms; NaN when nothing ran)."""
    with stats_csv.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("Name") == "Aggregated"]
    if not rows:
        raise LoadtestError(f"{stats_csv}: no Aggregated row; did any request run?")
    row = rows[0]
    requests = _number(row["Request Count"])
    failures = _number(row["Failure Count"])
    return {
        "requests": requests,
        "failures": failures,
        "error_rate": failures / requests if requests else 1.0,
        "rps": _number(row["Requests/s"]),
        "p50_ms": _number(row["50%"]),
        "p95_ms": _number(row["95%"]),
        "p99_ms": _number(row["99%"]),
        "max_ms": _number(row["Max Response Time"]),
        "mean_ms": _number(row["Average Response Time"]),
    }


HISTORY_COLUMNS = {"users": "User Count", "rps": "Requests/s", "failures_per_s": "Failures/s"}
HISTORY_PERCENTILES = {"p50_ms": "50%", "p95_ms": "95%", "p99_ms": "99%"}
HISTORY_POINTS = 300  # per-second points kept in the report


def stats_history(history_csv: Path) -> list[dict[str, float]]:
    """The 'Aggregated' rows of Locust's <prefix>_stats_history.csv, one a second: seconds since the first row,
    users, requests/s, failures/s and the p50/p95/p99 of the last seconds (ms; rows before any answer left out)."""
    if not history_csv.is_file():
        return []
    with history_csv.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("Name") == "Aggregated"]
    out: list[dict[str, float]] = []
    for row in rows:
        point = {"t": _number(row.get("Timestamp"))}
        point.update({key: _number(row.get(column)) for key, column in HISTORY_COLUMNS.items()})
        point.update({key: _number(row.get(column)) for key, column in HISTORY_PERCENTILES.items()})
        if point["p50_ms"] == point["p50_ms"]:  # NaN before the first answer
            out.append(point)
    start = out[0]["t"] if out else 0.0
    return [{**point, "t": point["t"] - start} for point in out]


def failure_messages(failures_csv: Path, limit: int = 5) -> list[str]:
    if not failures_csv.is_file():
        return []
    with failures_csv.open(newline="") as handle:
        return [f"{r['Occurrences']}x {r['Error']}" for r in list(csv.DictReader(handle))[:limit]]


def breaches(stats: dict[str, float], slo: SLO) -> list[str]:
    """Every SLO the statistics miss, each named with the measured value and its limit."""
    found = []
    if not stats["requests"] > 0:
        return ["no requests completed"]
    if stats["p95_ms"] > slo.p95_ms:
        found.append(f"p95 latency {stats['p95_ms']:.1f} ms > {slo.p95_ms:g} ms")
    if stats["p99_ms"] > slo.p99_ms:
        found.append(f"p99 latency {stats['p99_ms']:.1f} ms > {slo.p99_ms:g} ms")
    if stats["error_rate"] > slo.max_error_rate:
        found.append(f"error rate {stats['error_rate']:.4f} > {slo.max_error_rate:g}")
    if stats["rps"] < slo.min_rps:
        found.append(f"throughput {stats['rps']:.1f} req/s < {slo.min_rps:g} req/s")
    return found


def thinned(points: list[dict[str, float]], limit: int = HISTORY_POINTS) -> list[dict[str, float]]:
    """At most ``limit`` evenly spaced points (a one-hour test keeps a report of readable size), the last kept."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit - 1)] + [points[-1]]


def live_progress(
    bar: Progress, history_csv: Path, stop: Callable[[], None] | None, clock: Callable[[], float] = time.monotonic
) -> Callable[[], None]:
    """What :func:`run_stoppable` calls several times a second while Locust runs: the caller's ``stop``, then the
    progress moved to the seconds run so far, with Locust's latest figures (its history file, read once a second)."""
    started, read_at = clock(), [float("-inf")]

    def tick() -> None:
        if stop is not None:
            stop()
        now = clock()
        figures: dict[str, Any] = {}
        if now - read_at[0] >= 1.0:
            read_at[0] = now
            history = stats_history(history_csv)
            if history:
                last = history[-1]
                figures = {k: round(last[k], 1) for k in ("users", "rps", "p50_ms", "p95_ms", "p99_ms")}
                figures["failures_per_s"] = round(last["failures_per_s"], 2)
        bar.update(min(now - started, bar.total or float("inf")), **figures)

    return tick


def run_stoppable(
    command: list[str], env: dict[str, str], limit: float, stop: Callable[[], None] | None
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` with output captured and a time limit (TimeoutExpired past it), calling ``stop`` every
    0.1 s meanwhile; the process is killed and waited for whenever this raises."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        subprocess.Popen(command, env=env, stdout=out, stderr=err) as proc,
    ):
        try:
            if not wait_until(lambda: proc.poll() is not None, limit, interval=0.1, interrupt=stop):
                raise subprocess.TimeoutExpired(command, limit, output=_read(out), stderr=_read(err))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(command, proc.returncode, _read(out), _read(err))


def _read(handle: IO[bytes]) -> str:
    """Everything a child wrote to ``handle`` (a temporary file), as text."""
    handle.seek(0)
    return handle.read().decode("utf-8", "replace")


def run_loadtest(
    url: str,
    params: LoadtestParams,
    test_csv: Path,
    target: str,
    out_json: Path,
    out_html: Path,
    headers: dict[str, str] | None = None,
    stop: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run Locust headless against ``url`` and write the JSON and HTML reports; return the JSON document.

    ``headers`` go on every request (the API key when the server requires one: ``Settings.prediction_headers``).
    ``stop`` is called several times a second while Locust runs; whatever it raises stops Locust and propagates
    (a promotion's check for a rollback's abort request). Progress shows meanwhile (a bar on a terminal, else a log
    line every few seconds); the report keeps Locust's per-second ``history`` (the percentiles over time).
    """
    from mlrelease.core.progress import progress  # shows progress only: no dependency of the gate's result

    if not test_csv.is_file():
        raise LoadtestError(f"{test_csv}: test split not found (run the prepare stage first)")
    ready = wait_ready(url, params.ready_timeout_s)
    if headers and not safe_for_secrets(url):
        log.warning("loadtest: %s is neither https nor loopback; sending it no credentials", url)
        headers = None
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LOADTEST_CSV": str(test_csv),
        "LOADTEST_TARGET": target,
        "LOADTEST_MODEL": str(ready["model_name"]),
        "LOADTEST_BATCH": str(params.batch_size),
        "LOADTEST_USER_RPS": str(params.user_rps),
        "LOADTEST_HEADERS": json.dumps(headers or {}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "locust"
        command = locust_command(url, params, prefix, out_html)
        log.info("loadtest: %d users for %d s against %s", params.users, params.duration_s, url)
        limit = params.duration_s + LOCUST_GRACE_S
        history_csv = Path(f"{prefix}_stats_history.csv")
        try:
            with progress("loadtest", total=params.duration_s, unit="s", log=log) as bar:
                proc = run_stoppable(command, env, limit, live_progress(bar, history_csv, stop))
        except subprocess.TimeoutExpired as exc:
            raise LoadtestError(
                f"locust was still running {limit} s after a {params.duration_s} s test and was stopped; "
                f"check that {url} answers, then rerun: {_tail(exc.stderr)}"
            ) from exc
        stats_csv = Path(f"{prefix}_stats.csv")
        if not stats_csv.is_file():
            raise LoadtestError(f"locust exited {proc.returncode} without statistics: {proc.stderr[-2000:]}")
        stats = aggregated_stats(stats_csv)
        history = thinned(stats_history(history_csv))
        errors = failure_messages(Path(f"{prefix}_failures.csv"))
        if not stats["requests"] > 0:
            errors.append(f"locust exited {proc.returncode}: {proc.stderr[-1500:]}")
    found = breaches(stats, params.slo)
    report = {
        "url": url,
        "model_name": ready["model_name"],
        "model_version": ready.get("model_version"),
        "config": params.model_dump(exclude={"slo"}),
        "slo": params.slo.model_dump(),
        "stats": stats,
        "history": history,
        "failures": errors,
        "breaches": found,
        "passed": not found,
        "html_report": str(out_html),
    }
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def write_gate_rows(bundle: Path, test_csv: Path, target: str, sampled: int, out: Path) -> str:
    """Write the staging gate's payload rows for ``bundle``'s model to ``out`` and say where they came from.

    The test split's rows when it holds every feature the model card names (in the card's order, whatever the
    split's column order); otherwise, as on a deployment host that never ran the pipeline, ``sampled`` rows drawn
    from the version's own reference statistics (the smoke test's and the canary's traffic).
    """
    from deploy.targets.traffic import sample_rows
    from mlrelease.core.modelcard import ModelCard

    names = ModelCard.read(bundle).feature_names
    rows: list[list[str]] | list[list[float]] | None = _split_rows(test_csv, names)
    source = f"the test split {test_csv}"
    if rows is None:
        rows = sample_rows(bundle, sampled, seed=7)
        source = f"the version's reference statistics (no usable test split at {test_csv})"
        log.warning("load-test gate: %s is missing or lacks the model's features; sampling %d rows", test_csv, sampled)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, target])
        writer.writerows([*row, ""] for row in rows)
    return f"{len(rows)} rows from {source}"


def _split_rows(test_csv: Path, names: list[str]) -> list[list[str]] | None:
    """The split's rows reordered to ``names``, or None when there is no split, it is empty or lacks a feature."""
    if not test_csv.is_file():
        return None
    with test_csv.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        column = {name: i for i, name in enumerate(header)}
        if any(name not in column for name in names):
            return None
        picks = [column[name] for name in names]
        rows = [[row[i] for i in picks] for row in reader if row]
    return rows or None

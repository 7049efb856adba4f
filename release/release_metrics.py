"""Release-level metrics for alerts and dashboards, computed at each scrape from what the release commands already
record: the audit log (every alias and traffic change) and the journal (the command in flight). No command writes a
metric, so none can be left stale by a command that died. (Each slot's traffic weight reaches Prometheus with the
local target's scrape targets: ``up{weight}``, see :mod:`deploy.targets.local.discovery`.)

Served by ``python -m release.release_metrics --state-dir .mlrelease --listen 127.0.0.1:9109`` (the
``mlrelease-release`` job of ``deploy/monitoring/prometheus.yml``):

- ``mlrelease_audit_records_total{environment,action,outcome}``: audit records so far (a rollback is
  ``action="rollback"``; its outcome says whether production moved);
- ``mlrelease_audit_last_record_timestamp_seconds{environment,action,outcome}``: when the newest of them was written;
- ``mlrelease_operation_in_progress{command,version}``: 1 while a journaled command runs (no series otherwise), with
  ``mlrelease_operation_started_timestamp_seconds``, ``mlrelease_operation_last_progress_timestamp_seconds`` (its
  start or its newest audit record since, such as a canary step) and ``mlrelease_operation_holder_alive`` (0: the
  command died and the next one will recover it);
- ``mlrelease_traffic_weight_percent{environment,slot,version}``: each routed slot's share of its environment.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mlrelease.core.proc import pid_alive
from release.audit import AuditLog
from release.journal import Journal, Operation

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9109"
AUDIT_LABELS = ("environment", "action", "outcome")
OPERATION_LABELS = ("command", "version")


def audit_metrics(records: Iterable[dict[str, Any]]) -> list[Metric]:
    """Audit records counted, and the time of the newest, by environment, action and outcome."""
    counts: dict[tuple[str, ...], int] = {}
    newest: dict[tuple[str, ...], float] = {}
    for record in records:
        key = tuple(str(record.get(name, "")) for name in AUDIT_LABELS)
        counts[key] = counts.get(key, 0) + 1
        newest[key] = max(newest.get(key, 0.0), float(record.get("at", 0.0)))
    total = CounterMetricFamily("mlrelease_audit_records", "Audit records written", labels=AUDIT_LABELS)
    last = GaugeMetricFamily(
        "mlrelease_audit_last_record_timestamp_seconds", "When the newest audit record was written", labels=AUDIT_LABELS
    )
    for key in sorted(counts):
        total.add_metric(list(key), counts[key])
        last.add_metric(list(key), newest[key])
    return [total, last]


def operation_metrics(op: Operation | None, records: Iterable[dict[str, Any]]) -> list[GaugeMetricFamily]:
    """The journaled command in flight: that it runs, since when, its last progress, whether its process lives."""
    families = [
        GaugeMetricFamily(name, doc, labels=OPERATION_LABELS)
        for name, doc in (
            ("mlrelease_operation_in_progress", "1 while a journaled command runs"),
            ("mlrelease_operation_started_timestamp_seconds", "When the command in flight started"),
            (
                "mlrelease_operation_last_progress_timestamp_seconds",
                "The command's start or its newest audit record since (a canary step, say)",
            ),
            (
                "mlrelease_operation_holder_alive",
                "1 while the command's process lives; 0: it died, the next recovers it",
            ),
        )
    ]
    if op is None:
        return families
    since = [float(r.get("at", 0.0)) for r in records if float(r.get("at", 0.0)) >= op.started_at]
    labels = [str(op.command), op.version]
    values = (1.0, op.started_at, max([op.started_at, *since]), 1.0 if pid_alive(op.pid) else 0.0)
    for family, value in zip(families, values, strict=True):
        family.add_metric(labels, value)
    return families


class ReleaseCollector(Collector):
    """The release metrics of one state folder, read afresh at every scrape."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)

    def collect(self) -> Iterator[Metric]:
        records = AuditLog(self.state_dir).records()
        yield from audit_metrics(records)
        yield from operation_metrics(Journal(self.state_dir).load().operation, records)


def registry_for(state_dir: Path) -> CollectorRegistry:
    """A registry holding only the release metrics of ``state_dir``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReleaseCollector(state_dir))
    return registry


def render(state_dir: Path) -> str:
    """The release metrics page (Prometheus text format), as a scrape would get it."""
    return generate_latest(registry_for(state_dir)).decode()


def serve(state_dir: Path, listen: str = DEFAULT_LISTEN) -> tuple[WSGIServer, threading.Thread]:
    """Serve the release metrics at ``http://LISTEN/metrics`` from a daemon thread: the server (``shutdown()``
    stops it) and its thread."""
    host, _, port = listen.rpartition(":")
    return start_http_server(int(port), addr=host or "127.0.0.1", registry=registry_for(state_dir))


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the release metrics of a state folder until the process is stopped."""
    from mlrelease.core.settings import Settings

    parser = argparse.ArgumentParser(
        prog="python -m release.release_metrics", description="Serve a state folder's release metrics for Prometheus."
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="default: $MLRELEASE_HOME/.mlrelease")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help=f"host:port (default {DEFAULT_LISTEN})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    state_dir = args.state_dir or Settings().state_dir
    _, thread = serve(state_dir, args.listen)
    log.info("release metrics of %s at http://%s/metrics", state_dir, args.listen)
    with contextlib.suppress(KeyboardInterrupt):
        thread.join()  # until SIGTERM or Ctrl-C
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

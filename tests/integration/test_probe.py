"""The one probe against a real HTTP server: status and body of any answer, and the local target's slot metrics
naming an HTTP error (a scrape that fails is inconclusive for the canary analysis, never a pass)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploy.targets.base import DeploymentError
from deploy.targets.local import LocalTarget
from deploy.targets.local.state import Slot, StateStore
from mlrelease.core.http import probe

pytestmark = pytest.mark.integration

PAGES = {"/metrics": (200, "mlrelease_requests_total 3\n"), "/broken/metrics": (500, "boom")}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = PAGES.get(self.path, (404, "no such page"))
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_probe_returns_status_and_body_of_every_answer(server_port: int) -> None:
    base = f"http://127.0.0.1:{server_port}"
    assert probe(f"{base}/metrics") == (200, "mlrelease_requests_total 3\n")
    assert probe(f"{base}/broken/metrics") == (500, "boom")
    assert probe(f"{base}/nothing") == (404, "no such page")


def test_a_probe_of_loopback_ignores_a_proxy_from_the_environment(
    server_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", "http://192.0.2.1:3128")  # TEST-NET: would never answer
    monkeypatch.setenv("HTTP_PROXY", "http://192.0.2.1:3128")
    assert probe(f"http://127.0.0.1:{server_port}/metrics", timeout=5)[0] == 200


def _slot_on(state_dir: Path, port: int) -> LocalTarget:
    store = StateStore(state_dir)
    state = store.load()
    state.env("production").slots["canary"] = Slot(version="3", port=port, pid=1, model_name="m", bundle_dir="/b")
    store.save(state)
    return LocalTarget(state_dir, routed=())


def test_slot_metrics_are_the_slots_page_or_an_error_naming_the_status(server_port: int, tmp_path: Path) -> None:
    target = _slot_on(tmp_path, server_port)
    assert target.slot_metrics("production", "canary") == "mlrelease_requests_total 3\n"
    PAGES["/metrics"] = (503, "draining")
    try:
        with pytest.raises(DeploymentError) as err:
            target.slot_metrics("production", "canary")
    finally:
        PAGES["/metrics"] = (200, "mlrelease_requests_total 3\n")
    assert str(err.value) == f"HTTP 503 from http://127.0.0.1:{server_port}/metrics"

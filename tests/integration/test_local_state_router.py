"""State file, promotion lock and the nginx router, with real files, real processes and a real nginx."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.targets.base import DeploymentError
from deploy.targets.local.router import Nginx, render
from deploy.targets.local.state import DeployState, Environment, Slot, StateStore
from mlrelease.core.locking import PromotionLocked, promotion_lock

pytestmark = pytest.mark.integration


def test_state_roundtrip_and_atomic_replace(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load().environments == {}
    state = DeployState()
    state.env("production").slots["stable"] = Slot(version="3", port=1234, pid=1, model_name="m", bundle_dir="/b")
    state.env("production").weights = {"stable": 100}
    store.save(state)
    again = store.load()
    assert again.env("production").slots["stable"].url == "http://127.0.0.1:1234"
    assert again.env("production").weight("canary") == 0
    # no temp file left behind: the state, and the replicas published for Prometheus' file-based discovery
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["prometheus", "state.json", "targets.json"]


def test_corrupt_state_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="unreadable deployment state"):
        StateStore(tmp_path).load()


def test_second_caller_is_told_who_holds_the_lock(tmp_path: Path) -> None:
    code = (
        "import sys, time; from mlrelease.core.locking import promotion_lock\n"
        "with promotion_lock(__import__('pathlib').Path(sys.argv[1]), 'promote canary', 'alice'):\n"
        "    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(PromotionLocked, match=r"promote canary` by alice \(pid \d+\)"),
            promotion_lock(tmp_path, "promote production", "bob"),
        ):
            pass
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
        with promotion_lock(tmp_path, "promote production", "bob"):
            assert json.loads((tmp_path / "promotion.lock.holder").read_text())["by"] == "bob"
    finally:
        holder.kill()
        holder.wait()


class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server = self.server
        server.seen += 1  # type: ignore[attr-defined]
        if server.seen % 4 < server.drop:  # type: ignore[attr-defined]
            self.close_connection = True  # no answer at all: nginx's upstream "error", retried at the backup
            return
        server.answered += 1  # type: ignore[attr-defined]
        body = server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("X-Seen-Forwarded-For", self.headers.get("X-Forwarded-For", ""))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[dict[str, http.server.ThreadingHTTPServer]]:
    """A stable and a canary backend that answer with their name and count what they answered."""
    started = {}
    for name in ("stable", "canary"):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
        server.name, server.seen, server.answered, server.drop = name, 0, 0, 0  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started[name] = server
    yield started
    for server in started.values():
        server.shutdown()


@pytest.fixture
def backends(servers: dict[str, http.server.ThreadingHTTPServer]) -> dict[str, int]:
    return {name: s.server_address[1] for name, s in servers.items()}


def _env(ports: dict[str, int], weights: dict[str, float], entry: int) -> Environment:
    slots = {n: Slot(version=n, port=p, pid=os.getpid(), model_name="m", bundle_dir="/b") for n, p in ports.items()}
    return Environment(slots=slots, weights=weights, entry_port=entry)


def _hits(port: int, n: int) -> Counter[str]:
    import httpx

    with httpx.Client() as client:
        return Counter(client.get(f"http://127.0.0.1:{port}/x").text for _ in range(n))


@pytest.mark.integration
@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx is installed by make setup")
def test_nginx_splits_by_weight_and_reloads(tmp_path: Path, backends: dict[str, int]) -> None:
    import httpx

    from mlrelease.core.net import free_port

    entry = free_port()
    nginx = Nginx(tmp_path / "nginx")
    try:
        nginx.apply(_env(backends, {"stable": 100}, entry))
        assert _hits(entry, 20) == Counter({"stable": 20})
        seen = httpx.get(f"http://127.0.0.1:{entry}/x", headers={"X-Forwarded-For": "203.0.113.7"})
        # the client nginx saw replaces whatever X-Forwarded-For the client sent: the rate limit keys on it
        assert seen.headers["X-Seen-Forwarded-For"] == "127.0.0.1"
        pid = nginx.pid()
        nginx.apply(_env(backends, {"stable": 50, "canary": 50}, entry))
        assert nginx.pid() == pid  # a graceful reload, not a restart
        split = _hits(entry, 400)
        assert 120 < split["canary"] < 280, split
        nginx.apply(_env(backends, {"canary": 100}, entry))
        assert _hits(entry, 20) == Counter({"canary": 20})
    finally:
        nginx.stop()
    assert nginx.pid() is None


@pytest.mark.integration
@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx is installed by make setup")
def test_an_interrupted_reload_is_redone_by_the_next_apply(
    tmp_path: Path, backends: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the reload signal: nginx runs the new routing; putting the old one back must reload it
    (recovery puts traffic back on stable, then stops the canary that nginx would otherwise still send all to)."""
    from mlrelease.core.net import free_port

    entry = free_port()
    nginx = Nginx(tmp_path / "nginx")
    try:
        nginx.apply(_env(backends, {"stable": 100}, entry))
        waited = Nginx._wait_generation

        def interrupted(self: Nginx, *args: object) -> None:
            waited(self, *args)  # the new routing is live...
            raise KeyboardInterrupt  # ...and the command is interrupted before it records that

        monkeypatch.setattr(Nginx, "_wait_generation", interrupted)
        with pytest.raises(KeyboardInterrupt):
            nginx.apply(_env(backends, {"canary": 100}, entry))
        assert _hits(entry, 10) == Counter({"canary": 10})
        monkeypatch.setattr(Nginx, "_wait_generation", waited)
        nginx.apply(_env(backends, {"stable": 100}, entry))
        assert _hits(entry, 10) == Counter({"stable": 10})
    finally:
        nginx.stop()


@pytest.mark.integration
@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx is installed by make setup")
def test_nginx_that_cannot_start_is_a_deployment_error_naming_why(tmp_path: Path, backends: dict[str, int]) -> None:
    """A router whose entry port is taken used to end the command with a CalledProcessError traceback (an on-call's
    rollback included, when its nginx had died), without nginx's own words."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        nginx = Nginx(tmp_path / "nginx")
        try:
            with pytest.raises(DeploymentError, match="nginx could not start: .*Address already in use"):
                nginx.apply(_env(backends, {"stable": 100}, taken.getsockname()[1]))
        finally:
            nginx.stop()


@pytest.mark.integration
@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx is installed by make setup")
def test_a_canary_that_drops_requests_is_seen_only_by_its_share(
    tmp_path: Path, servers: dict[str, http.server.ThreadingHTTPServer], backends: dict[str, int]
) -> None:
    """nginx retries at stable what the canary dropped: clients see no error and no slot counts one, so the canary
    analysis judges the share the canary answered."""
    from mlrelease.core.net import free_port
    from mlrelease.core.params import CanaryParams
    from release.analysis import Snapshot, measure

    servers["canary"].drop = 3  # type: ignore[attr-defined]  # three requests in four get no answer
    entry = free_port()
    nginx = Nginx(tmp_path / "nginx")
    try:
        nginx.apply(_env(backends, {"stable": 50, "canary": 50}, entry))
        hits = _hits(entry, 400)
    finally:
        nginx.stop()
    assert sum(hits.values()) == 400 and hits["canary"] < 100, hits  # every client got an answer
    answered = {name: float(s.answered) for name, s in servers.items()}  # type: ignore[attr-defined]
    m = measure(Snapshot(answered["canary"]), Snapshot(answered["stable"]), 50, CanaryParams())
    assert m.verdict == "failed" and m.reasons[0].startswith("the canary answered "), (answered, m.reasons)
    assert m.canary_error_rate == 0 and m.stable_error_rate == 0  # no slot counted a failure


def test_router_refuses_empty_routing(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="no slot receives traffic"):
        render(Environment(entry_port=1), tmp_path, "g")
    text = render(_env({"stable": 1001, "canary": 1002}, {"stable": 95, "canary": 5}, 1000), tmp_path, "g")
    assert "95% mlrelease_1001;" in text and "* mlrelease_1002;" in text
    assert "server 127.0.0.1:1001 backup;" in text  # a dead canary falls back to stable

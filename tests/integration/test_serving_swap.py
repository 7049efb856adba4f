"""Hot swap (admin endpoint and SIGHUP) under load, failed loads, graceful drain, and registry URIs."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import signal
import socket
import threading
import weakref
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.serving_helpers import ADMIN_TOKEN, MODEL_NAME, breast_cancer, run_server, shared_bundle, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("serving")]
PREDICT = f"/v1/models/{MODEL_NAME}:predict"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return shared_bundle(tmp_path_factory, seed=0), shared_bundle(tmp_path_factory, seed=1)


class LoadGenerator:
    """Client threads posting predictions until stopped; every outcome is recorded."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.outcomes: list[tuple[int, str]] = []
        self.lock = threading.Lock()
        rows = breast_cancer()[0][:4].tolist()
        self.body = json.dumps({"instances": rows}).encode()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url + PREDICT, content=self.body, headers={"Content-Type": "application/json"})
                    outcome = (r.status_code, r.json().get("model_version", "") if r.status_code == 200 else r.text)
                except httpx.HTTPError as exc:
                    outcome = (0, repr(exc))
                with self.lock:
                    self.outcomes.append(outcome)

    def count(self, version: str) -> int:
        with self.lock:
            return sum(1 for status, v in self.outcomes if status == 200 and v == version)

    def wait_for(self, version: str, n: int, timeout: float = 60) -> None:
        done = threading.Event()
        for _ in range(int(timeout * 20)):
            if self.count(version) >= n:
                return
            done.wait(0.05)
        raise TimeoutError(f"fewer than {n} answers from version {version}: {Counter(self.outcomes).most_common(3)}")

    def __enter__(self) -> LoadGenerator:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def test_admin_swap_under_load_fails_no_request(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    v1, v2 = bundles
    with run_server(v1, tmp_path, enable_admin="true", admin_token=ADMIN_TOKEN, args=("--model-version", "1")) as srv:
        with LoadGenerator(srv.url) as load:
            load.wait_for("1", 50)
            swap = httpx.post(
                f"{srv.url}/admin/reload", json={"model_dir": str(v2), "model_version": "2"}, headers=ADMIN, timeout=60
            )
            assert swap.status_code == 200, swap.text
            assert swap.json()["previous_version"] == "1" and swap.json()["model_version"] == "2"
            load.wait_for("2", 50)
        failed = [o for o in load.outcomes if o[0] != 200]
        assert failed == []
        assert {v for _, v in load.outcomes} == {"1", "2"}
        assert load.outcomes[-1][1] == "2"
        assert httpx.get(f"{srv.url}/ready").json()["model_version"] == "2"


def test_a_swapped_out_model_is_freed_once_it_has_retired(bundles: tuple[Path, Path]) -> None:
    """Each install freezes the heap (gc.freeze); a retired model must not stay there: one model more per swap."""
    from deploy.serving.app import ModelServer
    from deploy.serving.config import ModelSource, ServingSettings

    v1, v2 = bundles

    async def swap_twice() -> tuple[weakref.ref[object], weakref.ref[object]]:
        server = ModelServer(ServingSettings(model_dir=v1, loop_lag_interval_ms=0))
        await server.reload(ModelSource(model_dir=v1, version="1"))
        assert server.current is not None
        first, batcher = weakref.ref(server.current.model), weakref.ref(server.current.batcher)
        for folder, version in ((v2, "2"), (v1, "3")):
            await server.reload(ModelSource(model_dir=folder, version=version))
            await asyncio.gather(*server._tasks)
        assert server.current is not None and server.current.model.version == "3"
        await server.shutdown()
        return first, batcher

    try:
        first, batcher = asyncio.run(swap_twice())
        assert first() is None and batcher() is None
    finally:
        gc.unfreeze()


def test_failed_or_unauthorized_reload_keeps_the_old_model(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    v1, _ = bundles
    broken = tmp_path / "broken"
    shutil.copytree(v1, broken)
    (broken / "model.pt").write_bytes(b"not a torchscript archive")
    with run_server(v1, tmp_path, enable_admin="true", admin_token=ADMIN_TOKEN) as srv:
        before = httpx.get(f"{srv.url}/ready").json()
        assert httpx.post(f"{srv.url}/admin/reload", json={}).status_code == 401
        wrong = {"Authorization": "Bearer " + "y" * len(ADMIN_TOKEN)}
        assert httpx.post(f"{srv.url}/admin/reload", json={}, headers=wrong).status_code == 401
        response = httpx.post(f"{srv.url}/admin/reload", json={"model_dir": str(broken)}, headers=ADMIN, timeout=60)
        assert response.status_code == 422
        assert response.json()["code"] == "load_failed" and "sha256" in response.json()["error"]
        missing = httpx.post(f"{srv.url}/admin/reload", json={"model_dir": str(tmp_path / "nope")}, headers=ADMIN)
        assert missing.status_code == 422 and "not a folder" in missing.json()["error"]
        bad_key = httpx.post(f"{srv.url}/admin/reload", json={"path": "x"}, headers=ADMIN)
        assert bad_key.status_code == 422 and "path" in bad_key.json()["error"]
        assert httpx.get(f"{srv.url}/ready").json() == before
        ok = httpx.post(srv.url + PREDICT, json={"instances": breast_cancer()[0][:1].tolist()})
        assert ok.status_code == 200
        assert 'mlrelease_model_reloads_total{outcome="failed"} 2.0' in httpx.get(f"{srv.url}/metrics").text


def test_sighup_reloads_the_configured_folder(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    v1, v2 = bundles
    live = tmp_path / "live"
    shutil.copytree(v1, live)
    with run_server(live, tmp_path) as srv:
        first = httpx.get(f"{srv.url}/ready").json()["sha256"]
        for name in ("model.pt", "model_card.json", "reference_stats.json"):
            shutil.copyfile(v2 / name, live / name)
        srv.process.send_signal(signal.SIGHUP)
        expected = json.loads((v2 / "model_card.json").read_text())["sha256"]
        assert expected != first
        for _ in range(600):
            if httpx.get(f"{srv.url}/ready").json().get("sha256") == expected:
                break
            threading.Event().wait(0.05)
        assert httpx.get(f"{srv.url}/ready").json()["sha256"] == expected
        assert srv.process.poll() is None


def test_sigterm_drains_an_in_flight_request(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    v1, _ = bundles
    body = json.dumps({"instances": breast_cancer()[0][:2].tolist()}).encode()
    with run_server(v1, tmp_path) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = (
                f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            sock.sendall(head + body[:10])
            wait_ready(srv.url, srv.process)  # the server has read the request head by the time it answers this
            srv.process.send_signal(signal.SIGTERM)
            threading.Event().wait(0.5)
            sock.sendall(body[10:])
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b'"predictions"' in answer
        assert srv.process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining


def test_registry_uri_is_resolved_and_its_tag_checked(
    bundles: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also: the download is scratch, gone once the model is in memory (or its check failed)."""
    from mlrelease.core.settings import Settings
    from registry.client import get_client
    from registry.register import register_bundle

    v1, _ = bundles
    home = tmp_path / "home"
    settings = Settings(**{"home": home, "MLFLOW_TRACKING_URI": None})
    version, _ = register_bundle(v1, MODEL_NAME, metrics={}, params={}, tags={}, settings=settings)
    args = ("--model-uri", f"models:/{MODEL_NAME}@candidate")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the servers' temp folder (server_env copies the environment)
    with run_server(None, tmp_path, args=args, home=str(home)) as srv:
        ready = httpx.get(f"{srv.url}/ready").json()
        assert ready["model_version"] == str(version.version)
        assert [p.name for p in scratch.iterdir()] == []
    get_client(settings).set_model_version_tag(MODEL_NAME, version.version, "artifact_sha256", "f" * 64)
    with (
        run_server(None, tmp_path, wait=False, args=args, home=str(home)) as srv,
        pytest.raises(TimeoutError, match="registry tag"),
    ):
        wait_ready(srv.url, srv.process, timeout=120)
    assert [p.name for p in scratch.iterdir()] == []

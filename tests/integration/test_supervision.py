"""Production heals itself: supervised replicas behind the router, with no mlrelease command run.

A replica killed under load is restarted by supervisord while its sibling takes the traffic (no failed request);
a replica that cannot start is given up after its retries and says so in ``status`` until ``reconcile``; with no
replica answering the router answers JSON; the router serves TLS with the configured certificate (the
self-signed default is made and checked in tests/unit/test_target_tls.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.targets.local import LocalTarget
from deploy.targets.local.tls import self_signed
from deploy.targets.traffic import LoadDriver, predict_path, sample_rows
from mlrelease.core.http import wait_until
from mlrelease.core.modelcard import ModelCard
from tests.serving_helpers import shared_bundle

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("supervision")]
PROD = "production"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory, seed=0)


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> Iterator[LocalTarget]:
    """Production with two supervised replicas of version 1 taking all traffic through its router, its TLS listener
    on a configured certificate (shared by the tests of this module: each leaves both replicas healthy)."""
    folder = tmp_path_factory.mktemp("supervised")
    own = self_signed(folder / "own-cert")  # configured by the operator: MLRELEASE_TLS_CERT / MLRELEASE_TLS_KEY
    target = LocalTarget(
        folder / "state",
        replicas={PROD: 2},
        ready_timeout_s=90,
        drain_timeout_s=3,
        start_retries=1,
        tls_cert=str(own.cert),
        tls_key=str(own.key),
    )
    try:
        target.deploy(PROD, "stable", bundle, "1")
        target.set_weights(PROD, {"stable": 100})
        yield target
    finally:
        target.stop_all()


def _pids(target: LocalTarget) -> list[int]:
    slot = target.slot(PROD, "stable")
    assert slot is not None
    return [replica.pid for replica in slot.replicas]


def _healthy(target: LocalTarget) -> bool:
    return all(row.healthy for row in target.status() if row.slot == "stable")


def test_a_killed_replica_is_restarted_by_the_supervisor_and_no_request_fails(prod: LocalTarget, bundle: Path) -> None:
    entry = prod.entry_url(PROD)
    assert entry is not None
    name = ModelCard.read(bundle).name
    driver = LoadDriver(entry, name, sample_rows(bundle, 16), rps=60, concurrency=4, max_seconds=60)
    before = _pids(prod)
    assert all(before) and len(set(before)) == 2
    driver.start()
    try:
        time.sleep(1.0)
        os.kill(before[0], signal.SIGKILL)
        # no command runs: the supervisor alone brings a new process up, and it gets traffic once ready
        assert wait_until(lambda: _pids(prod)[0] not in (0, before[0]) and _healthy(prod), 60, interval=0.1)
        time.sleep(1.0)
    finally:
        result = driver.stop()
    assert result.total > 60 and result.failed == 0, result.statuses
    assert _pids(prod)[1] == before[1]  # the sibling was never touched
    # the restart answered through the numpy program the first load checked and kept: torch was never loaded
    assert [p.name for p in (prod.state_dir / "programs").iterdir()] == [f"{ModelCard.read(bundle).sha256}.npz"]
    maps = Path(f"/proc/{_pids(prod)[0]}/maps").read_text()
    assert "libtorch" not in maps and "numpy" in maps


def test_a_replica_that_cannot_start_is_given_up_then_reconcile_restarts_it(prod: LocalTarget) -> None:
    slot = prod.slot(PROD, "stable")
    assert slot is not None
    victim = slot.replicas[0]
    prod.supervisor.stop(victim.program)
    with socket.socket() as squatter:  # another process took its port: every start fails to bind
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", victim.port))
        squatter.listen()
        prod.supervisor.start(victim.program)
        assert wait_until(lambda: (prod.supervisor.info(victim.program) or victim).state == "FATAL", 60, 0.2)
        row = next(r for r in prod.status() if r.slot == "stable")
        assert not row.healthy and row.replicas[0].state == "FATAL"
        assert "gave up" in row.replicas[0].detail and row.replicas[1].healthy
    said = prod.reconcile()
    assert any("restarted production/stable" in line for line in said), said
    assert _healthy(prod)


def test_with_no_replica_up_the_router_answers_json_and_reconcile_brings_them_back(
    prod: LocalTarget, bundle: Path
) -> None:
    slot = prod.slot(PROD, "stable")
    assert slot is not None and prod.entry_url(PROD)
    for replica in slot.replicas:
        prod.supervisor.stop(replica.program)
    name = ModelCard.read(bundle).name
    resp = httpx.post(f"{prod.entry_url(PROD)}{predict_path(name)}", json={"instances": sample_rows(bundle, 1)})
    assert resp.status_code == 502 and resp.headers["content-type"].startswith("application/json")
    assert resp.json()["code"] == "no_upstream" and resp.headers["retry-after"] == "1"
    assert "restarted production/stable" in " ".join(prod.reconcile())
    # the router was reloaded with the restart: its workers start afresh (no replica marked down, no stale
    # connection), so the next request is answered
    resp = httpx.post(f"{prod.entry_url(PROD)}{predict_path(name)}", json={"instances": sample_rows(bundle, 1)})
    assert resp.status_code == 200, resp.text


def test_the_router_serves_tls_with_the_configured_certificate(prod: LocalTarget) -> None:
    url = prod.tls_url(PROD)
    assert url is not None and url.startswith("https://127.0.0.1:")
    cert = prod.tls_files[0]
    assert cert is not None
    with pytest.raises(httpx.ConnectError):  # not a certificate any public authority signed
        httpx.get(f"{url}/ready", verify=ssl.create_default_context())
    resp = httpx.get(f"{url}/ready", verify=ssl.create_default_context(cafile=cert))
    assert resp.status_code == 200 and json.loads(resp.text)["model_version"] == "1"
    served = ssl.get_server_certificate(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    assert not (prod.state_dir / "nginx" / PROD / "tls").exists()  # no certificate of its own was made

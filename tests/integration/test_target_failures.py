"""A server that never becomes ready is stopped and forgotten, so it neither leaks nor blocks later commands."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deploy.targets.base import DeploymentError
from deploy.targets.local import LocalTarget
from mlrelease.core.modelcard import MODEL_FILE, ModelCard, sha256_file
from mlrelease.core.proc import pid_alive
from tests.serving_helpers import make_bundle

pytestmark = pytest.mark.integration


def _unloadable_bundle(dest: Path) -> Path:
    """A bundle whose card matches its bytes (sha256 is right) but whose model.pt is not TorchScript."""
    bundle = make_bundle(dest, epochs=2)
    (bundle / MODEL_FILE).write_bytes(b"not a torchscript archive\n" * 64)
    card = ModelCard.read(bundle)
    card.model_copy(update={"sha256": sha256_file(bundle / MODEL_FILE)}).write(bundle)
    return bundle


def test_failed_deploy_leaves_no_process_and_no_slot(tmp_path: Path) -> None:
    target = LocalTarget(tmp_path / "state", routed=(), ready_timeout_s=8, drain_timeout_s=2)
    bundle = _unloadable_bundle(tmp_path / "bundle")
    with pytest.raises(DeploymentError, match="not ready|exited"):
        target.deploy("staging", "pending", bundle, "9")
    state = target.store.load()
    assert "pending" not in state.env("staging").slots
    assert target.reconcile() == []  # nothing left for later commands to revive
    logs = list((tmp_path / "state" / "logs").glob("staging-pending-v9-*.log"))
    assert logs, "the server's log is kept for the post-mortem"
    deadline = time.monotonic() + 10
    # every server this target started for the slot is gone
    while time.monotonic() < deadline and any(pid_alive(p) for p in _server_pids(logs[0])):
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in _server_pids(logs[0]))


class _Interrupted(RuntimeError):
    """What the test's interrupt raises (a promotion raises PromotionError)."""


def test_an_interrupted_wait_stops_and_forgets_the_new_server(tmp_path: Path) -> None:
    """A rollback asking for the lock interrupts a deploy's wait for /ready at once, not after the ready timeout,
    and the half-started server is stopped and dropped like one that never became ready."""
    target = LocalTarget(tmp_path / "state", routed=(), ready_timeout_s=120, drain_timeout_s=2)
    bundle = make_bundle(tmp_path / "bundle", epochs=2)
    calls: list[bool] = []

    def interrupt() -> None:
        calls.append(target.starting("staging", "pending"))  # its server runs, not ready yet: worth waiting for
        if len(calls) == 3:  # the server is spawned and recorded, not yet ready (it is still importing torch)
            raise _Interrupted("a rollback asked for the lock")

    target.interrupt = interrupt
    try:
        with pytest.raises(_Interrupted):
            target.deploy("staging", "pending", bundle, "5")
    finally:
        target.interrupt = None
        if "pending" in target.store.load().env("staging").slots:  # the wait was not interrupted
            target.stop_all()
    assert calls == [True, True, True]  # stopped at the interrupt (the ready timeout would raise DeploymentError)
    assert not target.starting("staging", "pending")  # forgotten
    assert "pending" not in target.store.load().env("staging").slots
    logs = list((tmp_path / "state" / "logs").glob("staging-pending-v5-*.log"))
    assert logs
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(pid_alive(p) for p in _server_pids(logs[0])):
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in _server_pids(logs[0])), "the half-started server is stopped"
    assert target.reconcile() == []


def _server_pids(log: Path) -> list[int]:
    import psutil

    port = log.stem.rsplit("-", 1)[-1]
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and "deploy.serving" in p.info["cmdline"] and port in p.info["cmdline"]
    ]


def test_a_port_answered_by_another_version_is_never_taken_for_the_slot(tmp_path: Path) -> None:
    """Readiness means "this slot's version and bundle answer", not "something answers on the port"."""
    target = LocalTarget(tmp_path / "state", routed=(), ready_timeout_s=60, drain_timeout_s=2)
    bundle = make_bundle(tmp_path / "bundle", epochs=2)
    try:
        target.deploy("staging", "stable", bundle, "3")
        assert target.slot_problem("staging", "stable") is None
        state = target.store.load()
        real = state.env("staging").slots["stable"]
        state.env("staging").slots["stable"] = real.model_copy(update={"version": "4"})  # the record says 4
        target.store.save(state)
        problem = target.slot_problem("staging", "stable")
        assert problem is not None and "served by version '3'" in problem and "not by version 4" in problem
        with pytest.raises(DeploymentError, match="not ready to take traffic.*served by version '3'"):
            target.set_weights("staging", {"stable": 100})
        row = next(r for r in target.status() if r.slot == "stable")
        assert not row.healthy and "served by version '3'" in row.detail
    finally:
        target.stop_all()


def test_a_warm_slot_stops_when_its_window_ends_without_any_command(tmp_path: Path) -> None:
    """The rollback window is enforced by a detached watcher, unless a rollback gave the slot traffic meanwhile."""
    target = LocalTarget(tmp_path / "state", routed=(), ready_timeout_s=60, drain_timeout_s=2)
    bundle = make_bundle(tmp_path / "bundle", epochs=2)
    try:
        target.deploy("production", "stable", bundle, "1")
        target.deploy("staging", "stable", bundle, "1")
        target.set_weights("staging", {"stable": 100})
        target.rename("production", "stable", "previous", expires_at=time.time() + 1.5)
        target.rename("staging", "stable", "previous", expires_at=time.time() + 1.5)
        target.set_weights("staging", {"previous": 100})  # a rollback took this one over: it must stay
        expiring = target.slot("production", "previous")
        kept = target.slot("staging", "previous")
        assert expiring is not None and kept is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (target.slot("production", "previous") or pid_alive(expiring.pid)):
            time.sleep(0.2)
        assert target.slot("production", "previous") is None and not pid_alive(expiring.pid)
        assert target.slot_problem("staging", "previous") is None and pid_alive(kept.pid)
        log = (tmp_path / "state" / "logs" / "expiry.log").read_text()
        assert "rollback window ended" in log and "taken over" in log
    finally:
        target.stop_all()


def test_a_production_promotion_killed_between_its_renames_is_undone(tmp_path: Path) -> None:
    """Killed after `stable` became `previous` but before the new version became `stable`: recovery puts the old
    version back as stable with all traffic (a rollback must always find a stable slot)."""
    from mlrelease.core.params import CanaryParams, PromotionParams
    from mlrelease.core.settings import Settings
    from registry.versions import Registry
    from release.journal import Operation
    from release.outcome import Outcome
    from release.promoter import Promoter

    settings = Settings(home=tmp_path)
    target = LocalTarget(settings.state_dir, routed=(), ready_timeout_s=60, drain_timeout_s=2)
    bundle = make_bundle(tmp_path / "bundle", epochs=2)
    promoter = Promoter(
        settings=settings,
        model_name="m",
        canary_params=CanaryParams(),
        params=PromotionParams(),
        target=target,
        registry=Registry("m", settings),
        by="tester",
    )
    try:
        target.deploy("production", "previous", bundle, "1")
        target.deploy("production", "canary", bundle, "2")
        target.set_weights("production", {"canary": 100})
        state = promoter.journal.load()
        state.operation = Operation(command="promote production", version="2", pid=1, by="ci")
        promoter.journal.save(state)
        promoter.recover(Outcome())
        assert target.slot_version("production", "stable") == "1"
        assert target.weights("production") == {"stable": 100.0}
        assert target.slot("production", "canary") is None and target.slot("production", "previous") is None
        assert promoter.journal.load().operation is None
    finally:
        target.stop_all()


def test_down_stops_every_server_and_router_and_asks_before_production(tmp_path: Path) -> None:
    """`mlrelease down` (run by `make clean` before it deletes the state) leaves no server or nginx behind."""
    import shutil

    from deploy.targets.local.router import Nginx
    from mlrelease.core.settings import Settings
    from release.journal import Journal, Operation
    from tests.release_helpers import REPO, audit_actions, cli, show

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    state_dir = Settings(home=tmp_path).state_dir
    target = LocalTarget(state_dir, ready_timeout_s=60, drain_timeout_s=2)
    bundle = make_bundle(tmp_path / "bundle", epochs=2)
    try:
        target.deploy("production", "stable", bundle, "1")
        target.deploy("staging", "stable", bundle, "1")
        target.set_weights("production", {"stable": 100})
        servers = [slot.pid for slot in (target.slot("production", "stable"), target.slot("staging", "stable")) if slot]
        nginx = Nginx(state_dir / "nginx" / "production")
        assert len(servers) == 2 and nginx.pid() is not None
        journal = Journal(state_dir)
        journal.set_operation(Operation(command="rollback", version="0", pid=1, by="oncall", from_version="1"))
        unfinished = cli(tmp_path, "down", "--yes")
        said = " ".join((unfinished.stdout + unfinished.stderr).split())
        assert unfinished.returncode == 2 and "rollback from version 1 to 0 is unfinished" in said, said
        journal.set_operation(None)
        refused = cli(tmp_path, "down")
        said = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode == 2 and "production serves version 1 through http://127.0.0.1:" in said, said
        assert all(pid_alive(pid) for pid in servers) and nginx.pid() is not None  # nothing stopped
        done = cli(tmp_path, "down", "--yes")
        assert done.returncode == 0 and "stopped production/stable (version 1), staging/stable" in done.stdout, show(
            done
        )
        assert nginx.pid() is None and not any(pid_alive(pid) for pid in servers)
        assert target.status() == [] and audit_actions(tmp_path)[-1]["action"] == "down"
        assert "nothing is running" in cli(tmp_path, "down").stdout
    finally:
        target.stop_all()


def test_slots_ignore_the_operators_model_source_and_staging_takes_no_rate_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model URI exported for `python -m deploy.serving` made every slot refuse to start (a slot serves its bundle),
    and a per-client rate limit meant for production made staging answer the gate's load test with 429s."""
    import httpx

    from deploy.targets.traffic import predict_path, sample_rows

    monkeypatch.setenv("MLRELEASE_MODEL_URI", "models:/someone-elses@production")
    monkeypatch.setenv("MLRELEASE_RATE_LIMIT_PER_SECOND", "1")
    monkeypatch.setenv("MLRELEASE_RATE_LIMIT_BURST", "2")
    target = LocalTarget(tmp_path / "state", routed=(), ready_timeout_s=60, drain_timeout_s=2)
    bundle = make_bundle(tmp_path / "bundle", epochs=2)
    body = {"instances": sample_rows(bundle, 1)}
    path = predict_path(ModelCard.read(bundle).name)
    try:
        codes = {}
        for environment in ("staging", "production"):
            url = target.deploy(environment, "stable", bundle, "1")
            with httpx.Client(timeout=10) as client:
                codes[environment] = [client.post(url + path, json=body).status_code for _ in range(8)]
        assert codes["staging"] == [200] * 8, codes  # the gate's environment: no per-client limit
        assert 429 in codes["production"] and codes["production"][:2] == [200, 200], codes  # the operator's limit
    finally:
        target.stop_all()

"""The whole release story on this machine, with real server processes, a real nginx and a real registry:
pipeline output -> staging -> canary (a good version passes, a crash mid-canary is recovered, an erroring
version is rolled back automatically) -> production -> scripts/rollback.sh under load -> history.

Prediction auth is on throughout (MLRELEASE_API_KEY, as a production deployment would run): every gate's own
requests (smoke test, Locust gate, canary load, verification) carry the key, and a request without it gets 401.

What each step refuses, previews or skips on the way (re-runs, dry runs, a canary with no production, a version
without a canary pass, the rolled-back version coming back) is checked through the same command line against the
in-memory target, in tests/unit/test_release_incidents.py (the release story's refusals and no-ops); so is a
canary that always predicts one class, which the divergence check rolls back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from deploy.targets.traffic import LoadDriver, predict_path, sample_rows
from mlrelease.core.modelcard import ModelCard, sha256_file
from release.journal import Journal
from tests.release_helpers import (
    BIN,
    FAST_RELEASE,
    REPO,
    alias,
    audit_actions,
    cli,
    env_for,
    make_contract_variant,
    make_variant,
    ok,
    register,
    registry,
    show,
    stop_everything,
    target,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.xdist_group("release-story"),
    pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx: run make setup"),
]

FAST = {
    **FAST_RELEASE,
    "loadtest": {"users": 4, "spawn_rate": 4, "duration_s": 3, "slo": {"min_rps": 5, "p95_ms": 1000, "p99_ms": 2000}},
}
API_KEY = "story-" + "api-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def tamper_artifacts(home: Path, sha: str) -> int:
    """Flip the stored model.pt of a version in the artifact store; return how many copies were changed."""
    changed = 0
    for path in (home / "mlruns").rglob("model.pt"):
        if sha256_file(path) == sha:
            path.write_bytes(path.read_bytes() + b"\0")
            changed += 1
    return changed


def kill_mid_canary(home: Path) -> None:
    """Start a canary with a long interval, kill -9 it while traffic is split, check traffic stays healthy."""
    proc = subprocess.Popen(
        [str(BIN / "mlrelease"), "promote", "canary", "--interval", "60s"],
        cwd=home,
        env=env_for(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and target(home).weights("production").get("canary", 0) == 0:
            assert proc.poll() is None, "canary exited before shifting traffic"
            time.sleep(0.2)
        assert target(home).weights("production").get("canary", 0) > 0
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert Journal(target(home).state_dir).load().operation is not None  # the journal says a promotion died


@pytest.fixture
def story_home(registry_workspace, built_workspace, monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("MLRELEASE_API_KEY", API_KEY)  # every CLI run and server of the story inherits it
    home = registry_workspace.root
    registry_workspace.set_params(**FAST)
    try:
        yield home
    finally:
        stop_everything(home)


def test_release_story(story_home: Path, tmp_path: Path) -> None:
    home = story_home
    bundle = home / "models"
    name = ModelCard.read(bundle).name
    v1 = alias(home, name, "candidate")
    assert v1 is not None, "the pipeline registers a candidate"

    # staging: smoke + load gate, then the alias
    assert "alias staging" in ok(cli(home, "promote", "staging", "--by", "alice"))
    assert alias(home, name, "staging") == v1

    # the first release has no canary to pass: forced, with a reason
    ok(cli(home, "promote", "production", "--version", v1, "--force", "--reason", "first release"))
    assert alias(home, name, "production") == v1
    entry = target(home).entry_url("production")
    row = {"instances": sample_rows(bundle, 1)}
    assert httpx.post(f"{entry}{predict_path(name)}", json=row, timeout=5).status_code == 401
    assert httpx.post(f"{entry}{predict_path(name)}", json=row, headers=AUTH, timeout=5).status_code == 200

    # a good version: staging, a canary killed mid-way (recovered on re-run), then a passing canary. Its load
    # gate runs where no pipeline ran (no test split), as on a deployment host: rows from the version's own stats
    split = home / "data" / "prepared" / "test.csv"
    split.rename(split.with_name("test.csv.away"))
    try:
        v2 = register(make_variant(bundle, tmp_path / "good", "same"), home, name, "good")
        ok(cli(home, "promote", "staging"))
    finally:
        split.with_name("test.csv.away").rename(split)
    staged = [r for r in audit_actions(home) if r["action"] == "promote" and r["environment"] == "staging"]
    payloads = [r["evidence"]["loadtest"]["payload"] for r in staged if r["outcome"] == "done"]
    assert "from the test split" in payloads[0] and "reference statistics" in payloads[-1], payloads
    kill_mid_canary(home)
    canary = ok(cli(home, "promote", "canary"))
    assert "recovering from an interrupted" in canary and "passed" in canary, canary
    passed = next(r for r in audit_actions(home) if r["action"] == "canary-passed")
    driven = [m["driver_statuses"] for m in passed["evidence"]["measurements"]]
    assert driven and all(set(statuses) == {"200"} for statuses in driven), driven  # judged on answers, with the key
    ok(cli(home, "promote", "production"))
    assert alias(home, name, "production") == v2
    assert target(home).slot_version("production", "previous") == v1  # warm for rollbacks

    # a bad version (answers 500 for about half the rows) that slipped through staging: rolled back by itself
    v3 = register(make_variant(bundle, tmp_path / "bad", "error"), home, name, "bad")
    registry(home).set_registered_model_alias(name, "staging", v3)
    bad = cli(home, "promote", "canary")
    assert bad.returncode == 1 and "rolled back" in bad.stderr and "error rate" in bad.stderr, show(bad)
    assert alias(home, name, "canary") is None and alias(home, name, "production") == v2
    assert target(home).weights("production") == {"stable": 100.0}
    assert target(home).slot_version("production", "canary") is None

    # a version with a changed input contract (one more feature): healthy by its 5xx, but it answers today's
    # clients 422; the analysis compares client errors with stable's and rolls it back
    wide = register(make_contract_variant(bundle, tmp_path / "wide"), home, name, "contract")
    registry(home).set_registered_model_alias(name, "staging", wide)
    rejecting = cli(home, "promote", "canary")
    assert rejecting.returncode == 1 and "rolled back" in rejecting.stderr, show(rejecting)
    assert "client errors (4xx)" in rejecting.stderr and "changed input contract" in rejecting.stderr, show(rejecting)
    assert alias(home, name, "canary") is None and alias(home, name, "production") == v2
    assert target(home).weights("production") == {"stable": 100.0}

    # a version whose artifact does not match its sha256 never gets a process, let alone traffic
    v4 = register(make_variant(bundle, tmp_path / "tampered", "same"), home, name, "tampered")
    assert tamper_artifacts(home, registry(home).get_model_version(name, v4).tags["artifact_sha256"]) > 0
    tampered = cli(home, "promote", "staging", "--version", v4)
    assert tampered.returncode == 1 and "refused" in tampered.stderr, show(tampered)
    assert target(home).slot_version("staging", "stable") == v2

    # incident: roll back under load, zero failed requests
    with LoadDriver(
        str(entry), name, sample_rows(bundle, 32), rps=60, concurrency=4, max_seconds=90, headers=AUTH
    ) as load:
        time.sleep(1.0)
        rolled = subprocess.run(
            [str(REPO / "scripts" / "rollback.sh"), "--reason", "pager: p99"],
            cwd=tmp_path,
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=180,
        )
        time.sleep(1.0)
    assert rolled.returncode == 0, show(rolled)
    assert "fast path, warm switch" in rolled.stdout, show(rolled)  # the warm previous version took it at once
    assert load.result.failed == 0 and load.result.rejected == 0 and load.result.total > 50, load.result.statuses
    assert load.result.versions[v1] > 0
    assert alias(home, name, "production") == v1

    # history shows every step, in the log and on the versions
    actions = [(r["action"], r.get("to_version"), r["outcome"]) for r in audit_actions(home)]
    for step in [
        ("promote", v1, "forced"),
        ("canary-passed", v2, "done"),
        ("promote", v2, "done"),
        ("canary-rollback", v2, "rolled back"),
        ("integrity-check", v4, "rejected"),
        ("rollback", v1, "done"),
        ("recover", v2, "undone"),
    ]:
        assert step in actions, (step, actions)
    table = ok(cli(home, "history"))
    assert "canary-rollback" in table and "pager: p99" in table
    with_evidence = ok(cli(home, "history", "--evidence"))
    assert "evidence" in with_evidence and "items]" in with_evidence, with_evidence  # the canary's measurements
    lines = [json.loads(line) for line in ok(cli(home, "history", "--json", "--limit", "500")).splitlines()]
    assert [(r["action"], r.get("to_version"), r["outcome"]) for r in lines] == actions  # every record, in full

    # the version the incident rolled back: tagged so in the registry, its canary pass withdrawn
    tags = registry(home).get_model_version(name, v2).tags
    assert "pager: p99" in tags["mlrelease.rolled_back"] and tags["mlrelease.canary_passed"] == "false", tags
    tags = registry(home).get_model_version(name, v3).tags
    assert any(k.startswith("mlrelease.audit.") and "canary-rollback" in k for k in tags), tags

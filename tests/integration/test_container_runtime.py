"""The release story with the container runtime (buildah here): every slot runs its version's scanned image by digest.

v1's image is the image tests' build of the pipeline bundle (recorded on the version as `mlrelease build` records
it), scanned with `mlrelease scan`; v2's is built with `mlrelease build`. Then staging, a canary with analysis,
production, a supervised restart of a killed server, and scripts/rollback.sh under load with no failed request.
Every replica's server is traced from its process to the working container it runs in and that container's image
digest, which must be the digest that the registry, and `history`, name for the version. The rest of the matrix runs
against the fake target (tests/unit/test_release_incidents.py) and the process runtime
(tests/integration/test_release_story.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.engine import detect_engine
from deploy.image.build import BuildTarget, record_on_registry
from deploy.targets.local.container import name_prefix
from deploy.targets.traffic import LoadDriver, predict_path, sample_rows
from mlrelease.core.http import wait_until
from mlrelease.core.modelcard import ModelCard
from mlrelease.core.proc import listeners
from mlrelease.core.settings import Settings
from tests.release_helpers import (
    BIN,
    FAST_RELEASE,
    REPO,
    alias,
    cli,
    env_for,
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
    pytest.mark.image,
    pytest.mark.xdist_group("image"),  # with the image tests: their build of the bundle, a warm build cache
    pytest.mark.usefixtures("leaves_no_images"),
    pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx: run make setup"),
]

FAST = {
    **FAST_RELEASE,
    "loadtest": {"users": 4, "spawn_rate": 4, "duration_s": 3, "slo": {"min_rps": 5, "p95_ms": 1000, "p99_ms": 2000}},
    "promotion": {**FAST_RELEASE["promotion"], "replicas": 2},  # two replicas share a version's container
}
STORAGE = Path("/var/lib/containers/storage")
BUILD_SOURCES = ("pyproject.toml", "README.md", "release", "scoring", "requirements")


@pytest.fixture
def home(registry_workspace, built_workspace, monkeypatch) -> Iterator[Path]:  # noqa: ANN001
    """A workspace whose commands run slots in containers."""
    monkeypatch.setenv("MLRELEASE_RUNTIME", "container")
    registry_workspace.set_params(**FAST)
    found = registry_workspace.root
    for name in BUILD_SOURCES:  # what `mlrelease build` makes the project wheel from, beside the pipeline's files
        source, dest = REPO / name, found / name
        if source.is_dir() and not dest.exists():
            shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.is_file():
            shutil.copy2(source, dest)
    try:
        yield found
    finally:
        stop_everything(found)
        state = target(found).state_dir
        left = [name for name in working_containers() if name.startswith(name_prefix(state))]
        assert left == [], f"working containers left after `down`: {left}"


def working_containers() -> list[str]:
    listed = detect_engine("buildah").run("containers", "--json").stdout
    return [str(c["containername"]) for c in json.loads(listed or "null") or []]  # buildah: null when none


def image_digest_of_process(pid: int) -> str:
    """The digest of the image whose working container is ``pid``'s root file system (vfs: one directory each)."""
    mounts = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
    root = next(fields[3] for fields in mounts if fields[4] == "/")
    layer = Path(root).name
    containers = json.loads((STORAGE / "vfs-containers" / "containers.json").read_text())
    image_id = next(c["image"] for c in containers if c["layer"] == layer)
    facts = json.loads(detect_engine("buildah").run("inspect", "--type", "image", image_id).stdout)
    return str(facts["FromImageDigest"])


def served_digests(home: Path, environment: str, slot: str) -> set[str]:
    """The image digest every replica's server of the slot runs in (each found by the port it listens on)."""
    found = target(home).slot(environment, slot)
    assert found is not None, f"{environment}/{slot} is empty"
    digests = set()
    for replica in found.replicas:
        pids = listeners(replica.port)
        assert len(pids) == 1, f"{replica.port}: {pids}"
        assert os.readlink(f"/proc/{pids[0]}/root") != "/", "the server runs outside any container"
        digests.add(image_digest_of_process(pids[0]))
    return digests


def built_as(home: Path, built: dict[str, object], version: str) -> None:
    """Record an image built from the version's bundle as `mlrelease build --version` does: its tags on the registry
    version and ``reports/build.json`` (which `mlrelease scan` reads)."""
    card = ModelCard.read(home / "models")
    assert built["artifact_sha256"] == card.sha256, "the image tests built another bundle"
    record_on_registry(BuildTarget(home / "models", card.name, version, card.sha256), built, Settings(home=home))
    report = {**built, "model_version": version}
    (home / "reports" / "build.json").write_text(json.dumps(report, default=str))


def digest_of(home: Path, version: str, scanned: bool = True) -> str:
    """The version's image digest as `mlrelease build` recorded it (and `mlrelease scan` passed it)."""
    tags = registry(home).get_model_version(ModelCard.read(home / "models").name, version).tags
    if scanned:
        assert tags.get("image_scan") == "passed" and tags["image_scan_digest"] == tags["image_digest"], tags
    return str(tags["image_digest"])


def test_the_release_story_runs_the_scanned_images(home: Path, built: dict[str, object], tmp_path: Path) -> None:
    bundle = home / "models"
    name = ModelCard.read(bundle).name
    v1 = alias(home, name, "candidate")
    assert v1 is not None
    assert "container (buildah) runtime" in ok(cli(home, "status"))

    refused = cli(home, "promote", "staging")  # the gate is on with containers: no image yet
    assert refused.returncode == 2 and "has no image: run `mlrelease build" in refused.stderr, show(refused)
    built_as(home, built, v1)  # v1's image: the image tests' build of this bundle, recorded as `mlrelease build` does
    # the next version's image builds meanwhile (`mlrelease build`, on v1's cached layers), as for a next commit
    v2 = register(make_variant(bundle, tmp_path / "good", "same"), home, name, "good")
    next_build = subprocess.Popen(
        [str(BIN / "mlrelease"), "build", "--version", v2, "--report", "reports/build-next.json"],
        cwd=home,
        env=env_for(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ok(cli(home, "scan", timeout=900))  # reports/build.json: v1's image
        d1 = digest_of(home, v1)
        ok(cli(home, "promote", "staging", "--version", v1))
        assert served_digests(home, "staging", "stable") == {d1}
        ok(cli(home, "promote", "production", "--version", v1, "--force", "--reason", "first release"))
        assert served_digests(home, "production", "stable") == {d1}
    finally:
        built_next = next_build.communicate(timeout=900)[0]
    assert next_build.returncode == 0, built_next[-3000:]

    # v2: its own image; staged by alias (the staging gate ran above), then a canary under analysis
    d2 = digest_of(home, v2, scanned=False)
    assert d2 != d1
    registry(home).set_registered_model_alias(name, "staging", v2)
    canary = ok(cli(home, "promote", "canary"))
    assert "passed" in canary, canary
    ok(cli(home, "promote", "production"))
    assert served_digests(home, "production", "stable") == {d2}
    assert served_digests(home, "production", "previous") == {d1}  # warm, in its own container, for rollbacks

    # kill -9 of one replica's server: the supervisor starts it again, in the same image
    replica = target(home).slot("production", "stable").replicas[0]
    killed = listeners(replica.port)[0]
    os.kill(killed, signal.SIGKILL)

    def back() -> bool:
        pids = listeners(replica.port)
        return bool(pids) and pids[0] != killed and httpx.get(f"{replica.url}/ready", timeout=1).status_code == 200

    assert wait_until(back, 60, interval=0.1), "the killed replica did not come back"
    assert served_digests(home, "production", "stable") == {d2}

    # incident: roll back under load to the warm container, zero failed requests
    entry = target(home).entry_url("production")
    with LoadDriver(str(entry), name, sample_rows(bundle, 32), rps=60, concurrency=4, max_seconds=60) as load:
        time.sleep(1.0)
        rolled = subprocess.run(
            [str(REPO / "scripts" / "rollback.sh"), "--reason", "pager: p99"],
            cwd=tmp_path,
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=120,
        )
        time.sleep(1.0)
    assert rolled.returncode == 0 and "fast path, warm switch" in rolled.stdout, show(rolled)
    assert load.result.failed == 0 and load.result.versions[v1] > 0, load.result.statuses
    assert alias(home, name, "production") == v1
    assert served_digests(home, "production", "stable") == {d1}
    # the rolled-back version's servers were stopped through the engine, and drained: SIGTERM reached them
    logs = [path.read_text() for path in (target(home).state_dir / "logs").glob(f"production-*-v{v2}-*.log")]
    assert sum("Finished server process" in log for log in logs) >= 2, logs
    assert httpx.post(f"{entry}{predict_path(name)}", json={"instances": sample_rows(bundle, 1)}, timeout=5).is_success

    # history names the digest of every move
    moves = [json.loads(line) for line in ok(cli(home, "history", "--json")).splitlines() if line.strip()]
    digests = {str(r.get("to_version")): r.get("image_digest") for r in moves if r.get("to_version")}
    assert digests[v1] == d1 and digests[v2] == d2, digests

"""A release against a team registry: `mlflow server` on a real PostgreSQL, its artifacts in an S3 bucket.

The embedded default is a sqlite file; a team points every command at its server with MLFLOW_TRACKING_URI alone.
Here PostgreSQL runs from its Debian binaries in a temporary cluster on loopback (as the `postgres` user when the
tests run as root: PostgreSQL refuses root), moto's S3 server stands in for the bucket, and `mlflow server` runs on
both (`--artifacts-destination s3://…`, credentials and MLFLOW_S3_ENDPOINT_URL in its environment only). The
pipeline's register stage, the promotions and scripts/rollback.sh run unchanged against that server. The aliases
are then read back from PostgreSQL itself, the bundles from the bucket (no artifact folder exists anywhere), and the
workspace's own sqlite registry must not have changed. Last, a bundle tampered in the bucket is refused, and a
store that stops answering is said in one line."""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploy.targets.traffic import predict_path, sample_rows
from mlrelease.core.modelcard import ModelCard
from mlrelease.core.net import free_port
from mlrelease.core.settings import Settings
from registry.artifacts import ArtifactStoreError
from registry.client import bounded_requests
from tests.release_helpers import (
    BIN,
    FAST_RELEASE,
    REPO,
    audit_actions,
    cli,
    env_for,
    make_variant,
    ok,
    stop_everything,
    target,
)
from tests.s3_helpers import S3Server, moto_s3
from tests.workspace import Workspace


def _pg_bindir() -> Path | None:
    """Debian keeps PostgreSQL's server programs off PATH, in /usr/lib/postgresql/VERSION/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(_pg_bindir() is None, reason="PostgreSQL: run make setup"),
    pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx: run make setup"),
]

FAST = {
    **FAST_RELEASE,
    "loadtest": {"users": 4, "spawn_rate": 4, "duration_s": 3, "slo": {"min_rps": 5, "p95_ms": 1000, "p99_ms": 2000}},
}
BUCKET, PREFIX = "team-artifacts", "mlflow"


@dataclass(frozen=True)
class Postgres:
    bindir: Path
    port: int
    as_user: tuple[str, ...]  # runuser prefix when the tests run as root

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/mlflow"  # psycopg 3, whatever SQLAlchemy's default

    def sql(self, query: str) -> list[str]:
        """Rows of ``query`` from the mlflow database, each as 'a|b|...'."""
        proc = subprocess.run(
            [*self.as_user, str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
            + ["-d", "mlflow", "-tA", "-c", query],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return proc.stdout.split()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on a loopback port, trust auth, with an empty `mlflow` database."""
    bindir = _pg_bindir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="mlrelease-pg-"))
    data = root / "data"
    as_user: tuple[str, ...] = ()
    try:
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(root, account.pw_uid, account.pw_gid)
            as_user = ("runuser", "-u", "postgres", "--")
        db = Postgres(bindir, free_port(), as_user)
        initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]
        _run(as_user, root, *initdb)
        options = f"-p {db.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run(
            as_user,
            root,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            options,
            "start",
        )
        _run(as_user, root, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(db.port), "-U", "postgres", "mlflow")
        yield db
    finally:
        if (data / "postmaster.pid").exists():  # started, even when pg_ctl gave up waiting
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _run(as_user: tuple[str, ...], root: Path, *args: str) -> None:
    """A PostgreSQL program; on failure, its output and the server's log name the cause."""
    proc = subprocess.run([*as_user, *args], capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        log = (root / "log").read_text()[-2000:] if (root / "log").exists() else ""
        raise AssertionError(f"{args[0]} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n{log}")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a loopback port, with the team's (empty) artifact bucket."""
    with moto_s3(tmp_path_factory.mktemp("team-s3")) as server:
        server.make_bucket(BUCKET)
        yield server


@dataclass(frozen=True)
class TeamServer:
    url: str
    workdir: Path  # the server's working folder, where a local artifact store would appear


@pytest.fixture(scope="module")
def team_server(postgres: Postgres, s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
    """`mlflow server` on the PostgreSQL backend, storing and serving its artifacts in the S3 bucket only."""
    workdir = tmp_path_factory.mktemp("team-server")
    port = free_port()
    log = workdir.parent / "team-mlflow.log"
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", postgres.uri, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1", "--artifacts-destination", f"s3://{BUCKET}/{PREFIX}"]
    # the storage credentials and endpoint are the server's alone (clients get presigned URLs); AWS_MAX_ATTEMPTS:
    # the outage drill below waits for no retry of boto3 (a refused connection answers the same every time)
    env = {**s3.env(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint, "AWS_MAX_ATTEMPTS": "1"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    with log.open("w") as out:
        server = subprocess.Popen(
            command, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # the first start creates the schema (alembic migrations)
        while not _answers(f"{url}/health"):
            assert server.poll() is None, f"mlflow server exited {server.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow server not up in 180 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield TeamServer(url, workdir)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _local_versions(home: Path) -> int:
    """Model versions in the workspace's own sqlite registry."""
    from registry.client import get_client

    return len(get_client(Settings(home=home, mlflow_tracking_uri=None)).search_model_versions())


def test_a_release_against_a_team_server_on_postgresql_and_s3(
    postgres: Postgres, s3: S3Server, team_server: TeamServer, registry_workspace: Workspace, tmp_path: Path
) -> None:
    url = team_server.url
    home = registry_workspace.root
    registry_workspace.set_params(**FAST)
    name = ModelCard.read(home / "models").name
    local_before = _local_versions(home)
    team = {"MLFLOW_TRACKING_URI": url}
    try:
        # the workspace trained against its sqlite registry: register refuses to split a version from its run
        stale = _dvc(registry_workspace, team, "repro", "--force", "--single-item", "register")
        assert stale.returncode != 0 and "not in the registry at " + url in stale.stderr, stale.stderr
        assert "dvc repro --force train" in stale.stderr and postgres.sql("select name from registered_models") == []
        # what the message says: train on the team server, then the rest of the pipeline, unchanged
        for args in (("repro", "--force", "--single-item", "train"), ("repro",)):
            proc = _dvc(registry_workspace, team, *args)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        assert postgres.sql(f"select alias || '=' || version from registered_model_aliases where name = '{name}'") == [
            "candidate=1"
        ]
        assert int(postgres.sql("select count(*) from runs where status = 'FINISHED'")[0]) >= 1

        # the first release straight from the candidate (the staging gates run once, for version 2, below)
        ok(cli(home, "promote", "production", "--version", "1", "--force", "--reason", "first release", **team))

        v2 = _register(make_variant(home / "models", tmp_path / "v2", "same"), home, name, url)
        assert v2 == "2"
        ok(cli(home, "promote", "staging", "--by", "alice", **team))
        ok(cli(home, "promote", "production", "--version", v2, "--force", "--reason", "no canary in this test", **team))

        # the registry is the incident (nothing answers on its port): traffic still moves and is verified, and the
        # command ends within seconds saying what is left (MLflow's own retries used to hold it for minutes)
        down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
        started = time.monotonic()
        rollback = _rollback_sh(home, down, "team registry drill")
        took = time.monotonic() - started
        said = " ".join((rollback.stdout + rollback.stderr).split())
        assert rollback.returncode == 1 and "production traffic is on version 1, verified;" in said, said
        assert (
            "Run scripts/rollback.sh again once the registry answers" in said and "traffic: 100% on version 1" in said
        ), said
        assert took < 60, f"{took:.0f} s with the registry down: {said}"
        entry = target(home).entry_url("production")
        assert entry is not None
        answer = httpx.post(entry + predict_path(name), json={"instances": sample_rows(home / "models", 1)})
        assert answer.json()["model_version"] == "1", answer.text

        rollback = _rollback_sh(home, team)  # the registry is back: the same rollback is finished
        assert rollback.returncode == 0, rollback.stdout + rollback.stderr
        record = [r for r in audit_actions(home) if r["action"] == "rollback"][-1]
        assert record["to_version"] == "1" and "finished_by" in record["evidence"], record  # who started it, who ended

        aliases = postgres.sql(
            f"select alias || '=' || version from registered_model_aliases where name = '{name}' order by alias"
        )
        assert aliases == ["candidate=2", "production=1", "staging=2"], aliases  # read from PostgreSQL itself
        # both bundles live in the bucket, and nowhere else: no artifact folder beside the server or in the workspace
        assert len(_bucket_models(s3)) == 2, s3.keys(BUCKET)
        assert not list(team_server.workdir.rglob("*.pt")) and not (home / "mlartifacts").exists()
        assert _local_versions(home) == local_before  # nothing went to the workspace's sqlite registry
        history = " ".join(ok(cli(home, "history", **team)).split())
        assert "team registry drill" in history and "first release" in history

        _tampered_bundle_is_refused(s3, home, name, team)
        _store_outage_is_one_line(s3, home, name, url, tmp_path, team)
    finally:
        stop_everything(home)


def _bucket_models(s3: S3Server) -> dict[str, str]:
    """sha256 of every model.pt in the team bucket, by object key."""
    client = s3.client()
    keys = [key for key in s3.keys(BUCKET, PREFIX) if key.endswith("/model.pt")]
    return {key: hashlib.sha256(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest() for key in keys}


def _tampered_bundle_is_refused(s3: S3Server, home: Path, name: str, team: dict[str, str]) -> None:
    """Version 1's model and card swapped in the bucket for version 2's (a pair that agrees with itself, so only
    the registry's sha256 tag tells): a host without a cached copy refuses it before any server starts."""
    from registry.client import get_client

    client = get_client(Settings(home=home, mlflow_tracking_uri=team["MLFLOW_TRACKING_URI"]))
    sha = {v: client.get_model_version(name, v).tags["artifact_sha256"] for v in ("1", "2")}
    by_sha = {digest: key for key, digest in _bucket_models(s3).items()}
    for file in ("model.pt", "model_card.json"):
        source, dest = (by_sha[sha[v]].rsplit("/", 1)[0] + "/" + file for v in ("2", "1"))
        s3.client().copy_object(Bucket=BUCKET, Key=dest, CopySource={"Bucket": BUCKET, "Key": source})
    shutil.rmtree(Settings(home=home).state_dir / "bundles" / "v1")  # a host that never fetched version 1
    refused = cli(home, "promote", "staging", "--version", "1", **team)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 1 and "version 1 refused" in said and "does not match the registry tag" in said, said
    assert target(home).slot_version("staging", "stable") == "2" and target(home).slot("staging", "pending") is None
    checks = [r for r in audit_actions(home) if r["action"] == "integrity-check"]
    assert checks and checks[-1]["outcome"] == "rejected" and checks[-1]["to_version"] == "1", checks


def _store_outage_is_one_line(
    s3: S3Server, home: Path, name: str, url: str, tmp_path: Path, team: dict[str, str]
) -> None:
    """The bucket's endpoint stops answering: a fetch (promote) and a store (register) each end in one line that
    names the artifact store and what to check, within the registry timeout's bounds."""
    s3.stop()
    started = time.monotonic()
    down = cli(home, "promote", "staging", "--version", "1", **team)
    lines = [line for line in down.stderr.splitlines() if "could not fetch the model's artifacts" in line]
    assert down.returncode == 2 and len(lines) == 1 and "MLFLOW_S3_ENDPOINT_URL" in lines[0], down.stderr
    assert target(home).slot_version("staging", "stable") == "2"
    bundle = make_variant(home / "models", tmp_path / "v3", "same")
    with bounded_requests(), pytest.raises(ArtifactStoreError, match="could not store the model's artifacts"):
        _register(bundle, home, name, url)
    assert time.monotonic() - started < 90, f"{time.monotonic() - started:.0f} s to give up on the store"


def _rollback_sh(home: Path, env: dict[str, str], reason: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / "rollback.sh"), *(["--reason", reason] if reason else [])],
        cwd=home,
        env=env_for(home, **env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _dvc(workspace: Workspace, team: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dvc"), *args],
        cwd=workspace.root,
        env={**workspace.env, **team},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _register(bundle: Path, home: Path, name: str, url: str) -> str:
    from registry.register import register_bundle

    settings = Settings(home=home, mlflow_tracking_uri=url)
    version, _ = register_bundle(bundle, name, metrics={}, params={}, tags={"variant": "v2"}, settings=settings)
    return str(version.version)

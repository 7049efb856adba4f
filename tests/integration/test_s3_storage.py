"""DVC's remote on S3: one clone pushes its data, models and run cache to a bucket; a second clone pulls them, and
`dvc repro` there restores every stage instead of running it.

The bucket is moto's S3 server on loopback, reached the way a team reaches its S3-compatible store: `dvc remote add`
and `endpointurl` (committed in .dvc/config), credentials from the environment. The first clone is a copy of the
session's built workspace (which stays as it is). The last test shows what DVC says when the credentials are missing
or the remote does not answer (docs/team.md quotes it; the workflows add a line naming the remote).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mlrelease.core.net import free_port
from tests.s3_helpers import S3Server, moto_s3, uncarried_outputs
from tests.workspace import BIN, Workspace, copy_workspace

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("s3")]

BUCKET = "team-dvc"
REMOTE = "storage"


@dataclass(frozen=True)
class Clones:
    """Two clones of one repository and the S3 server their DVC remote lives on."""

    first: Workspace
    second: Workspace
    s3: S3Server

    def dvc(
        self, ws: Workspace, *args: str, credentials: bool = True, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """``dvc ARGS`` in a clone, with the S3 settings (and the dummy credentials unless told otherwise)."""
        return subprocess.run(
            [str(BIN / "dvc"), *args],
            cwd=ws.root,
            env={**self.s3.env(ws.env, credentials=credentials), **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="module")
def clones(built_workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clones]:
    """A copy of the built workspace that committed its run and pushed it (data and run cache) to the bucket, and
    a fresh git clone of it that has not pulled anything yet."""
    root = tmp_path_factory.mktemp("dvc-s3")
    with moto_s3(root) as s3:
        s3.make_bucket(BUCKET)
        first, second = Workspace(root / "first"), Workspace(root / "second")
        copy_workspace(built_workspace.root, first.root)
        clones = Clones(first, second, s3)
        _ok(clones.dvc(first, "remote", "add", "--default", REMOTE, f"s3://{BUCKET}/dvc"))
        _ok(clones.dvc(first, "remote", "modify", REMOTE, "endpointurl", s3.endpoint))
        first.run("git", "add", "-A")
        first.run("git", "commit", "-q", "-m", "the pipeline's run and the team's DVC remote")
        _ok(clones.dvc(first, "push", "--run-cache"))
        first.run("git", "clone", "-q", str(first.root), str(second.root))
        yield clones


def test_a_second_clone_restores_every_stage_from_the_bucket(clones: Clones) -> None:
    first, second = clones.first, clones.second
    keys = clones.s3.keys(BUCKET, "dvc/")
    assert any(key.startswith("dvc/runs/") for key in keys) and any(key.startswith("dvc/files/md5/") for key in keys)

    _ok(clones.dvc(second, "pull", "--run-cache"))
    for output in ("models/model.pt", "models/checkpoint.pt", "data/prepared/train.csv", "data/reference_stats.json"):
        assert (second.root / output).read_bytes() == (first.root / output).read_bytes(), output

    # the pulled run cache alone restores a stage: here without dvc.lock (a branch that never committed it)
    lock = second.root / "dvc.lock"
    committed = lock.read_text()
    lock.unlink()
    shutil.rmtree(second.root / "data" / "prepared")
    try:
        alone = clones.dvc(second, "repro", "--single-item", "prepare")
    finally:
        lock.write_text(committed)
    _ok(alone)
    assert "Stage 'prepare' is cached - skipping run" in alone.stdout and "Running stage" not in alone.stdout, alone
    split = Path("data/prepared/train.csv")
    assert (second.root / split).read_bytes() == (first.root / split).read_bytes()

    blockers = uncarried_outputs(yaml.safe_load((second.root / "dvc.yaml").read_text()), _tracked(second))
    assert not blockers, f"dvc.yaml: outputs with `cache: false` that git does not carry either: {blockers}"
    changed = _changed_stages(clones.dvc(second, "status", "dvc.yaml"))
    assert not changed, f"{changed} changed after the pull: `dvc repro` would re-run them"

    repro = clones.dvc(second, "repro")
    _ok(repro)
    assert "Running stage" not in repro.stdout, repro.stdout
    status = clones.dvc(second, "status", "dvc.yaml")
    assert "up to date" in status.stdout, status.stdout


def test_missing_credentials_and_an_unreachable_remote_say_so(clones: Clones) -> None:
    first = clones.first
    no_credentials = clones.dvc(first, "push", credentials=False)
    assert no_credentials.returncode != 0 and "Unable to locate credentials" in no_credentials.stderr, (
        no_credentials.stderr
    )

    nobody = f"http://127.0.0.1:{free_port()}"
    _ok(clones.dvc(first, "remote", "modify", "--local", REMOTE, "endpointurl", nobody))
    try:
        # botocore's retries against a closed port only make the same answer later: one attempt
        down = clones.dvc(first, "push", AWS_MAX_ATTEMPTS="1", AWS_RETRY_MODE="standard")
    finally:
        _ok(clones.dvc(first, "remote", "modify", "--local", "--unset", REMOTE, "endpointurl"))
    assert down.returncode != 0 and f'Could not connect to the endpoint URL: "{nobody}/' in down.stderr, down.stderr


def _changed_stages(status: subprocess.CompletedProcess[str]) -> list[str]:
    """The stages `dvc status` lists as changed (each starts a line of its own: ``name:``)."""
    _ok(status)
    return re.findall(r"^(\S[^:\s]*):\s*$", status.stdout, flags=re.MULTILINE)


def _tracked(ws: Workspace) -> set[str]:
    """The files git carries in a clone."""
    return set(ws.run("git", "ls-files").stdout.split())


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"

"""A real S3 endpoint for the tests: moto's standalone server (`moto_server`) on a loopback port.

The tools reach it the way a team reaches its own S3-compatible store: dummy credentials from the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) and each tool's endpoint setting: DVC's remote
option ``endpointurl``, MLflow's ``MLFLOW_S3_ENDPOINT_URL``. No AWS configuration of the machine is read.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mlrelease.core.net import free_port, stop_process
from tests.workspace import BIN

REGION = "us-east-1"
START_TIMEOUT_S = 30.0
# the credentials a test's tools use; a missing-credentials drill removes them
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # noqa: S105 (dummy values)
# nothing of the machine's own AWS setup (profiles, the instance metadata service) reaches a test; the config and
# credentials files are the server's own empty ones (a missing file or /dev/null makes aiobotocore fail)
ISOLATION = {"AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint URL, its log and its process."""

    endpoint: str
    log: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop the server (an outage drill; stopping twice does no harm)."""
        stop_process(self.process, timeout=10)

    def env(self, base: Mapping[str, str] | None = None, credentials: bool = True) -> dict[str, str]:
        """``base`` (default os.environ) with AWS settings for a child process on this endpoint; without
        credentials for the drill that shows what a tool says then."""
        return {**_isolated(self.log.parent, base), **(CREDENTIALS if credentials else {})}

    def client(self) -> Any:
        """A boto3 S3 client on this endpoint, with the dummy credentials."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def make_bucket(self, name: str) -> str:
        """Create the bucket ``name``; return it."""
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def moto_s3(workdir: Path) -> Iterator[S3Server]:
    """Start `moto_server` on a free loopback port, wait (bounded) until it answers, stop it on exit."""
    log = workdir / "moto-server.log"
    port = free_port()
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_isolated(workdir), cwd=workdir)
    server = S3Server(f"http://127.0.0.1:{port}", log, process)
    try:
        _wait_until_up(server)
        yield server
    finally:
        server.stop()


def _isolated(workdir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default os.environ) without the machine's AWS settings: the test region, and empty AWS files in
    ``workdir``."""
    files = {"AWS_CONFIG_FILE": workdir / "aws-config", "AWS_SHARED_CREDENTIALS_FILE": workdir / "aws-credentials"}
    for path in files.values():
        path.touch()
    env = {key: value for key, value in (os.environ if base is None else base).items() if not key.startswith("AWS_")}
    return {**env, **ISOLATION, **{key: str(path) for key, path in files.items()}}


def _wait_until_up(server: S3Server) -> None:
    """Poll the endpoint until it answers; fail with the server's log when it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(server.endpoint):
        if server.process.poll() is not None:
            raise AssertionError(f"moto_server exited {server.process.returncode}:\n{server.log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"moto_server not up in {START_TIMEOUT_S:g} s:\n{server.log.read_text()[-2000:]}")
        time.sleep(0.2)


def _answers(endpoint: str) -> bool:
    """Whether the S3 endpoint answers an HTTP request at all."""
    try:
        httpx.get(f"{endpoint}/moto-api/", timeout=2)
    except httpx.HTTPError:
        return False
    return True


def uncarried_outputs(dvc_yaml: Mapping[str, Any], tracked: Collection[str]) -> dict[str, list[str]]:
    """Per stage, the outputs a fresh clone gets neither from `dvc pull` (they are ``cache: false``) nor from git
    (not committed): `dvc repro` there re-runs those stages whatever the remote holds, because DVC 3 also keeps no
    run cache for a stage with a plain ``cache: false`` output."""
    found: dict[str, list[str]] = {}
    for name, stage in dvc_yaml.get("stages", {}).items():
        missing = [path for path, cached in _outputs(stage) if not cached and not _is_tracked(path, tracked)]
        if missing:
            found[name] = missing
    return found


def _outputs(stage: Mapping[str, Any]) -> Iterator[tuple[str, bool]]:
    """(path, cached) of every output a stage declares: outs, metrics and plots."""
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            if isinstance(entry, str):
                yield entry, True
                continue
            for path, options in entry.items():
                yield path, bool((options or {}).get("cache", True))


def _is_tracked(path: str, tracked: Collection[str]) -> bool:
    """Whether git carries ``path``: the file itself, or a file under it (a folder output)."""
    folder = path.rstrip("/") + "/"
    return path in tracked or any(name.startswith(folder) for name in tracked)

"""The local target's container runtime: a slot runs its version's serving image, by digest, not the project's venv.

Chosen by ``MLRELEASE_RUNTIME`` (``container``, ``process``, or ``auto``: container when an engine that can run the
image answers, found as ``mlrelease build`` finds it). With buildah (no daemon: these machines), one working
container per image digest and state folder (``buildah from``) is shared by every replica of every slot running that
digest: with vfs storage a working container is a full copy of the image, so disk grows with the versions running,
not with the replicas. Each replica is ``buildah run --isolation chroot`` of the image's own Python in it, sharing
the host network, as the image's non-root user, serving the model baked into the image. docker and podman run each
replica as a ``run --rm --network host`` container of the image instead. A supervised shim in front of the engine
(:mod:`deploy.targets.launch` ``--supervise``) passes the supervisor's SIGTERM to the server, so it drains.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from deploy.engine import Engine, EngineError, detect_engine, inspect_image, make_engine
from deploy.targets import launch
from deploy.targets.base import DeploymentError
from mlrelease.core.proc import SERVER_MARKER

log = logging.getLogger(__name__)

RUNTIME_VAR = "MLRELEASE_RUNTIME"
RUNTIMES = ("auto", "container", "process")
SHA_LABEL, PATH_LABEL = "io.mlrelease.model.sha256", "io.mlrelease.model.path"
IMAGE_PYTHON = "/opt/venv/bin/python"
ENV_IN, LOCK_IN, CACHE_IN = "/run/mlrelease/env.json", "/run/mlrelease/start.lock", "/var/cache/mlrelease/programs"
# The host's settings that name host paths or choose the host side's behaviour: never passed into the image.
HOST_ONLY = frozenset(
    {
        "MLRELEASE_HOME",
        "MLRELEASE_MODEL_DIR",
        "MLRELEASE_MODEL_URI",
        "MLRELEASE_PROGRAM_CACHE",
        "MLRELEASE_STARTUP_LOCK",
        "MLRELEASE_RUNTIME",
        "MLRELEASE_TARGET",
        "MLRELEASE_TLS_CERT",
        "MLRELEASE_TLS_KEY",
        "MLRELEASE_CONTAINER_ENGINE",
        "MLRELEASE_BUILDAH_STORAGE_DRIVER",
        "MLRELEASE_BUILDAH_ISOLATION",
    }
)


class ImageRun(BaseModel):
    """How a slot's replicas run its image: the engine, the image by digest, its user, and (buildah) the working
    container they share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: str
    image: str  # repository@sha256:…
    user: str = ""
    container: str = ""  # buildah's working container; "" with docker or podman (one container per replica)
    env: tuple[str, ...] = ()  # the image's own environment (KEY=VALUE), the base of every replica's
    model_path: str = "/opt/model"

    @property
    def digest(self) -> str:
        return self.image.rpartition("@")[2]


@dataclass(frozen=True)
class Runtime:
    """The runtime a deploy uses: ``process``, or ``container`` with the engine that runs the image."""

    name: str
    engine: Engine | None = None

    def describe(self) -> str:
        return f"container ({self.engine.name})" if self.engine is not None else "process"


def choose_runtime(setting: str | None) -> Runtime:
    """The runtime ``MLRELEASE_RUNTIME`` asks for (auto: container when an engine answers, else process); a bad
    value, or ``container`` with no engine, is a one-line DeploymentError saying what to set."""
    value = (setting or "auto").strip().lower()
    if value not in RUNTIMES:
        raise DeploymentError(
            f"{RUNTIME_VAR}={setting!r}: use container, process or auto (the server's torchscript|auto is "
            "MLRELEASE_MODEL_RUNTIME)"
        )
    if value == "process":
        return Runtime("process")
    try:
        return Runtime("container", detect_engine())
    except EngineError as exc:
        if value == "container":
            raise DeploymentError(f"{RUNTIME_VAR}=container, but {exc}; or set {RUNTIME_VAR}=process") from exc
        log.info("no container engine answers (%s): slots run as processes", exc)
        return Runtime("process")


def engine_of(run: ImageRun) -> Engine:
    """The engine a slot's image runs with (as recorded when it was deployed)."""
    try:
        return make_engine(run.engine)
    except EngineError as exc:
        raise DeploymentError(f"cannot run image {run.image}: {exc}") from exc


def name_prefix(state_dir: Path) -> str:
    """The start of every working container name of one state folder (two test folders never share one)."""
    return f"mlrelease-{hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:8]}-"


def container_name(state_dir: Path, digest: str) -> str:
    """The working container of one image digest for one state folder."""
    return name_prefix(state_dir) + (digest.partition(":")[2] or digest)[:12]


def prepare(engine: Engine, state_dir: Path, image: str, card_sha256: str) -> ImageRun:
    """Check the image by digest serves the version's artifact (its model label), and (buildah) make its working
    container unless one exists; DeploymentError naming what to run when the image is missing or different."""
    if "@sha256:" not in image:
        raise DeploymentError(f"image {image!r} is not pinned by digest; run `mlrelease build` for the version")
    try:
        facts = inspect_image(engine, image)
    except (EngineError, ValueError, KeyError) as exc:
        raise DeploymentError(
            f"image {image} is not in {engine.name}'s storage ({str(exc)[-200:]}): run `mlrelease build` for the "
            "version on this host (or pull it), or set MLRELEASE_RUNTIME=process"
        ) from exc
    raw = facts.get("config")
    config: dict[str, Any] = raw if isinstance(raw, dict) else {}
    labels = dict(config.get("Labels") or {})
    if labels.get(SHA_LABEL) != card_sha256:
        raise DeploymentError(
            f"image {image} holds model sha256 {str(labels.get(SHA_LABEL))[:12]}, not the version's artifact "
            f"{card_sha256[:12]}: rebuild it with `mlrelease build`"
        )
    env = tuple(str(item) for item in (config.get("Env") or []))
    run = ImageRun(
        engine=engine.name,
        image=image,
        user=str(config.get("User") or ""),
        env=env,
        model_path=str(labels.get(PATH_LABEL) or "/opt/model"),
    )
    if not engine.is_buildah:
        return run
    name = container_name(state_dir, run.digest)
    if engine.run("inspect", "--type", "container", name, check=False).returncode != 0:
        log.info("creating the working container %s of %s", name, image)
        try:
            engine.run("from", "--pull=never", "--name", name, image, timeout=600)
        except EngineError as exc:
            raise DeploymentError(f"cannot create a container of {image}: {exc}") from exc
    return run.model_copy(update={"container": name})


def image_uid(run: ImageRun) -> int | None:
    """The numeric uid the image runs as (None: root, or a user name this side cannot resolve)."""
    uid = run.user.partition(":")[0]
    return int(uid) if uid.isdigit() and int(uid) != 0 else None


def owned_by_image(path: Path, run: ImageRun, directory: bool = False) -> Path:
    """Create ``path`` (0600 file or 0700 folder) for the image's user to open: chowned to it when this process
    may (root); otherwise left as is, and the server inside goes without it."""
    if directory:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    else:
        path.touch(mode=0o600, exist_ok=True)
    uid = image_uid(run)
    if uid is not None and os.geteuid() == 0:
        os.chown(path, uid, uid)
    return path


def inner_env(run: ImageRun, host_env: Mapping[str, str], with_cache: bool) -> dict[str, str]:
    """A replica's environment inside the image: the image's own, plus the host's serving settings that name no
    host path; the start-up lock and program cache at their mount points."""
    env = dict(item.split("=", 1) for item in run.env if "=" in item)
    env.update({k: v for k, v in host_env.items() if k.startswith("MLRELEASE_") and k not in HOST_ONLY})
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env[launch.STARTUP_LOCK] = LOCK_IN
    if with_cache:
        env["MLRELEASE_PROGRAM_CACHE"] = CACHE_IN
    return env


def write_inner_env(path: Path, run: ImageRun, env: Mapping[str, str]) -> Path:
    """Write the inner environment (secrets among it) readable by the image's user only."""
    owned_by_image(path, run)
    path.write_text(json.dumps(dict(env)), encoding="utf-8")
    return path


def replica_argv(
    engine: Engine, run: ImageRun, mounts: Mapping[str, str], server_args: list[str], port: int, name: str
) -> list[str]:
    """The engine command that runs one replica of the image: ``mounts`` host path -> container path (the env file,
    the lock, the program cache), then the image's Python running the launch shim, then the server."""
    inner = [IMAGE_PYTHON, "-m", launch.MODULE, ENV_IN, "--", IMAGE_PYTHON, "-m", SERVER_MARKER]
    served = [*inner, "--model-dir", run.model_path, *server_args]
    volumes = [arg for host, inside in mounts.items() for arg in ("--volume", f"{host}:{inside}")]
    if engine.is_buildah:
        return engine.cmd("run", "--isolation", engine.isolation or "chroot", *volumes, run.container, "--", *served)
    tmp = "/tmp"  # noqa: S108  # nosec B108  # the container's own tmpfs (the image's MLRELEASE_HOME)
    hardening = ["--read-only", "--tmpfs", tmp, "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    if os.geteuid() != 0:  # the mounted files are this user's (0600): run as this user, the image's files are
        hardening += ["--user", f"{os.getuid()}:{os.getgid()}"]  # root-owned and world-readable
    head = ["run", "--rm", "--name", f"{name}-r{port}", "--network", "host", *hardening, *volumes]
    return engine.cmd(*head, "--entrypoint", IMAGE_PYTHON, run.image, *served[1:])


def remove_unused(engine: Engine, state_dir: Path, in_use: set[str]) -> list[str]:
    """Remove this state folder's working containers that no slot runs any more (buildah); return their names."""
    if not engine.is_buildah:
        return []
    prefix = name_prefix(state_dir)
    listed = engine.run("containers", "--json", check=False)
    try:
        names = [str(c.get("containername", "")) for c in json.loads(listed.stdout or "null") or []]  # none: null
    except ValueError:
        return []
    removed = []
    for name in names:
        if name.startswith(prefix) and name not in in_use and engine.run("rm", name, check=False).returncode == 0:
            removed.append(name)
            log.info("removed the working container %s (no slot runs its image)", name)
    return removed

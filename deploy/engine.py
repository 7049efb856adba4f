"""Container engine detection and the few commands the image steps need, for docker, podman or buildah.

docker and podman are used when their daemon/runtime answers; otherwise buildah runs with no daemon
(``--storage-driver vfs --isolation chroot`` on machines without overlay or user namespaces).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ENGINES = ("docker", "podman", "buildah")


class EngineError(RuntimeError):
    """No container engine answered, or an engine command failed (the message carries its stderr)."""


@dataclass(frozen=True)
class Engine:
    """One container engine and the global options every call needs."""

    name: str
    binary: str
    global_args: tuple[str, ...] = ()
    isolation: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def cmd(self, *args: str) -> list[str]:
        """The full argv for an engine subcommand."""
        return [self.binary, *self.global_args, *args]

    def run(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an engine subcommand, capture its output, and raise EngineError with stderr on failure."""
        argv = self.cmd(*args)
        log.debug("engine: %s", " ".join(argv))
        env = {**os.environ, **self.extra_env}
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise EngineError(f"`{' '.join(argv[:4])} ...` did not finish within {timeout:.0f} s") from exc
        if check and proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-3000:]
            raise EngineError(f"`{' '.join(argv[:6])} ...` failed (exit {proc.returncode}): {tail}")
        return proc

    def stream(self, *args: str, on_line: Callable[[str], None], timeout: float = 1800) -> None:
        """Run an engine subcommand, handing each line it prints (stdout and stderr together) to ``on_line`` as it
        comes (a build's steps, for its progress); EngineError with the output's tail on failure or timeout."""
        argv = self.cmd(*args)
        log.debug("engine: %s", " ".join(argv))
        tail: deque[str] = deque(maxlen=40)
        env = {**os.environ, **self.extra_env}
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
            watchdog = threading.Timer(timeout, proc.kill)
            watchdog.start()
            try:
                for line in proc.stdout or ():
                    tail.append(line)
                    on_line(line.rstrip())
                code = proc.wait()
            finally:
                timed_out = not watchdog.is_alive()
                watchdog.cancel()
        if timed_out:
            raise EngineError(f"`{' '.join(argv[:4])} ...` did not finish within {timeout:.0f} s")
        if code != 0:
            raise EngineError(f"`{' '.join(argv[:6])} ...` failed (exit {code}): {''.join(tail).strip()[-3000:]}")

    @property
    def is_buildah(self) -> bool:
        return self.name == "buildah"


def _answers(argv: list[str], timeout: float = 10) -> bool:
    """True when the command exits 0 in time (an engine whose daemon is down does not)."""
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def make_engine(name: str, storage_driver: str | None = None, isolation: str | None = None) -> Engine:
    """An Engine for a named tool; buildah gets its storage driver and isolation (default vfs, chroot)."""
    if name not in ENGINES:
        raise EngineError(f"unknown container engine {name!r}: use one of {', '.join(ENGINES)}")
    binary = shutil.which(name)
    if binary is None:
        raise EngineError(f"{name} is not installed (on Debian: apt-get install {name}; or pick another engine)")
    if name == "buildah":
        driver = storage_driver or os.environ.get("MLRELEASE_BUILDAH_STORAGE_DRIVER", "vfs")
        iso = isolation or os.environ.get("MLRELEASE_BUILDAH_ISOLATION", "chroot")
        return Engine(name, binary, ("--storage-driver", driver), iso, {"BUILDAH_ISOLATION": iso})
    return Engine(name, binary)


def detect_engine(preferred: str | None = None) -> Engine:
    """The preferred engine, else docker or podman when one answers, else buildah; EngineError when none."""
    choice = preferred or os.environ.get("MLRELEASE_CONTAINER_ENGINE") or None
    if choice:
        return make_engine(choice)
    for name in ("docker", "podman"):
        binary = shutil.which(name)
        if binary and _answers([binary, "info"]):
            return make_engine(name)
    if shutil.which("buildah"):
        return make_engine("buildah")
    raise EngineError(
        "no container engine answers: start docker (or podman), or install buildah "
        "(Debian: apt-get install buildah; scripts/install_debs.sh does it)"
    )


def image_exists(engine: Engine, ref: str) -> bool:
    """True when the image is in the engine's local storage."""
    if engine.is_buildah:
        return engine.run("inspect", "--type", "image", ref, check=False).returncode == 0
    return engine.run("image", "inspect", ref, check=False).returncode == 0


def inspect_image(engine: Engine, ref: str) -> dict[str, object]:
    """Normalized facts about a local image: id, digest, size_bytes, config (Docker-style keys)."""
    if engine.is_buildah:
        data = json.loads(engine.run("inspect", "--type", "image", ref).stdout)
        manifest = json.loads(data["Manifest"])
        size = sum(int(layer["size"]) for layer in manifest["layers"])
        docker_cfg = (data.get("Docker") or {}).get("config") or {}
        oci_cfg = (data.get("OCIv1") or {}).get("config") or {}
        config = {**oci_cfg, **docker_cfg}
        return {
            "id": data["FromImageID"],
            "digest": data["FromImageDigest"],
            "size_bytes": size,
            "config": config,
            "layers": len(manifest["layers"]),
        }
    data = json.loads(engine.run("image", "inspect", ref).stdout)[0]
    digests = data.get("RepoDigests") or []
    digest = digests[0].split("@", 1)[1] if digests else data["Id"]
    return {
        "id": data["Id"],
        "digest": digest,
        "size_bytes": int(data["Size"]),
        "config": data.get("Config") or {},
        "layers": len(data.get("RootFS", {}).get("Layers", [])),
    }


def buildah_bud(engine: Engine) -> list[str]:
    """buildah's build command: cached layers, no pulls (no registry is reachable), docker format (HEALTHCHECK)."""
    return [
        "bud",
        "--layers",
        "--force-rm",
        "--pull=false",
        "--format",
        "docker",
        "--isolation",
        engine.isolation or "chroot",
    ]


def build_image(
    engine: Engine,
    context: Path,
    tag: str,
    build_args: dict[str, str],
    dockerfile: Path | None = None,
    timeout: float = 3600,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Build ``context`` into ``tag`` reusing cached layers; HEALTHCHECK is kept (docker format). ``on_line`` hears
    each line of the engine's output as it comes (the build's steps, for its progress)."""
    args = buildah_bud(engine) if engine.is_buildah else ["build"]
    for key, value in sorted(build_args.items()):
        args += ["--build-arg", f"{key}={value}"]
    args += ["-f", str(dockerfile or context / "Dockerfile"), "-t", tag, str(context)]
    if on_line is None:
        engine.run(*args, timeout=timeout)
    else:
        engine.stream(*args, on_line=on_line, timeout=timeout)


def save_image(engine: Engine, ref: str, dest: Path) -> Path:
    """Write the image as a docker-archive tar (manifest.json + config + layer tars) for scanning."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    if engine.is_buildah:
        engine.run("push", ref, f"docker-archive:{dest}:{ref}")
    elif engine.name == "podman":
        engine.run("save", "--format", "docker-archive", "-o", str(dest), ref)
    else:
        engine.run("save", "-o", str(dest), ref)
    return dest


def local_images(engine: Engine) -> list[tuple[str, list[str]]]:
    """Every tagged or dangling image in local storage as (id, names); cached build layers are not listed."""
    if engine.name == "docker":
        listed = engine.run("image", "ls", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}").stdout
        images: dict[str, list[str]] = {}
        for line in listed.splitlines():
            image_id, _, name = line.partition(" ")
            images.setdefault(bare_id(image_id), []).extend([] if name == "<none>:<none>" else [name])
        return list(images.items())
    args = ("images", "--json", "--no-trunc") if engine.is_buildah else ("images", "--format", "json", "--no-trunc")
    data = json.loads(engine.run(*args).stdout or "[]")
    return [(bare_id(str(i.get("id") or i.get("Id"))), list(i.get("names") or i.get("Names") or [])) for i in data]


def bare_id(image_id: str) -> str:
    """An image id without its ``sha256:`` prefix, as ``inspect_image`` reports it for buildah."""
    return image_id.removeprefix("sha256:")


def remove_image(engine: Engine, ref: str, force: bool = True) -> bool:
    """Remove a local image, or one name of an image that has others; False when the engine refused. Without
    ``force`` an image a container uses stays. A missing image is not an error."""
    flags = ("-f",) if force else ()
    args = ("rmi", *flags, ref) if engine.is_buildah else ("image", "rm", *flags, ref)
    return engine.run(*args, timeout=300, check=False).returncode == 0
